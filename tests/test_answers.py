import pytest
from hypothesis import given
from hypothesis import strategies as st

from visplay_core.answers import (
    MAX_QUESTION_CHARS,
    answers_match,
    extract_answer,
    extract_question,
    normalize_answer,
)
from visplay_core.prompts import format_answer, format_question

LONG = 100_000


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("I count them. \\boxed{3}", "3"),
        ("\\boxed{2} no wait \\boxed{3}", "3"),
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("\\boxed{ a red car }", "a red car"),
        ("\\boxed{猫}。", "猫"),
        ("no answer here", None),
        ("", None),
        ("\\boxed{}", None),
        ("\\boxed{   }", None),
        ("\\boxed{3", None),
        ("\\boxed{3} then \\boxed{4", None),  # the last one is unfinished
        ("\\boxed{\\frac{1}{2}", None),
        ("\\boxed 3", None),
    ],
)
def test_extract_answer(completion, expected):
    assert extract_answer(completion) == expected


def test_extract_answer_reads_what_format_answer_writes():
    assert extract_answer(format_answer("There are two dogs.", "2")) == "2"


def test_extract_answer_long_inputs():
    assert extract_answer("é" * LONG + "\\boxed{4}") == "4"
    assert extract_answer("\\boxed{" * LONG) is None
    assert extract_answer("\\boxed{" + "{" * LONG) is None
    assert extract_answer("\\boxed{" + "{}" * LONG + "}") == "{}" * LONG


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("  The   Red Car. ", "red car"),
        ('"blue"', "blue"),
        ("“blue”!", "blue"),
        ("Two", "2"),
        ("twenty", "20"),
        ("three apples", "3 apples"),
        ("1.0", "1"),
        ("1.50", "1.5"),
        ("10", "10"),
        ("Yes.", "yes"),
        ("Y", "yes"),
        ("true", "yes"),
        ("Correct", "yes"),
        ("No", "no"),
        ("n", "no"),
        ("FALSE", "no"),
        ("incorrect", "no"),
        ("a dog", "dog"),
        ("an apple", "apple"),
        ("another apple", "another apple"),
        ("the the cat", "cat"),
        ('the "cat"', "cat"),
        ("A", "a"),  # a lone letter is an option, not an article
        ("the", "the"),
        ("?", ""),
        ("Ünïcödé", "ünïcödé"),
    ],
)
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


def test_normalize_answer_long_input():
    assert normalize_answer('"a ' * LONG + "cat") == "cat"
    assert normalize_answer("x" + '."' * LONG) == "x"


@given(st.text())
def test_normalize_answer_is_idempotent(text):
    once = normalize_answer(text)
    assert normalize_answer(once) == once


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("2", "two", True),
        ("Yes.", "true", True),
        ("The cat", "cat", True),
        ("1.0", "1", True),
        ("2", "3", False),
        ("1/2", "0.5", False),  # no symbolic math
        (None, "2", False),
        ("2", None, False),
        (None, None, False),
        ("?", "!", False),  # answers that normalize to nothing match nothing
    ],
)
def test_answers_match(a, b, expected):
    assert answers_match(a, b) is expected


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("<question>What color is the car?</question>", "What color is the car?"),
        ("Let me look. <question>  How many dogs?  </question> done", "How many dogs?"),
        ("<question>¿Cuántos perros hay?</question>", "¿Cuántos perros hay?"),
        ("<question>What is it?</question><question>Where?</question>", None),
        ("<question><question>What?</question></question>", None),
        ("What color is the car?", None),
        ("<question>What color is the car?", None),
        ("</question>What?<question>", None),
        ("<question>   </question>", None),
        ("<question>Describe the car.</question>", None),
        ("<question>What is <b>this</b>?</question>", None),
        ("<question>Is 3 < 4 and 5 > 2?</question>", "Is 3 < 4 and 5 > 2?"),
    ],
)
def test_extract_question(completion, expected):
    assert extract_question(completion) == expected


def test_extract_question_reads_what_format_question_writes():
    assert extract_question(format_question("What is on the table?")) == "What is on the table?"


def test_extract_question_length_limit():
    at_limit = "x" * (MAX_QUESTION_CHARS - 1) + "?"
    assert extract_question(format_question(at_limit)) == at_limit
    assert extract_question(format_question("x" + at_limit)) is None
    assert extract_question(format_question("<" * LONG + "?")) is None
    assert extract_question("é" * LONG + format_question("Why?")) == "Why?"
