"""Reading completions: the Reasoner's boxed answer, the Questioner's question, and answer matching.

A missing or unreadable answer is ``None``, never a placeholder string, so it can never win a vote
or match a label. Every function here runs in time linear in its input.
"""

from __future__ import annotations

import re

from .prompts import QUESTION_CLOSE, QUESTION_OPEN

_BOXED = "\\boxed{"
MAX_QUESTION_CHARS = 300

_NUMBER_WORDS = {
    word: str(i)
    for i, word in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
        "fifteen sixteen seventeen eighteen nineteen twenty".split()
    )
}
_YES = {"yes", "y", "true", "correct"}
_NO = {"no", "n", "false", "incorrect"}
_QUOTES = "\"'`“”‘’"
_TRAILING_PUNCTUATION = ".,;:!?"
# Leading quotes, whitespace and articles followed by a word. It cannot fail to match, so it never
# backtracks: linear time.
_LEADING_JUNK = re.compile(rf"^(?:[\s{_QUOTES}]+|(?:a|an|the) (?=\S))*")
_DECIMAL = re.compile(r"-?\d+\.\d+")
_TAG = re.compile(r"</?[A-Za-z][^<>]*>")


def extract_answer(completion: str) -> str | None:
    """The stripped content of the last ``\\boxed{...}`` in ``completion``, braces nested inside it
    included; ``None`` if there is none, if it is empty, or if the last one is never closed."""
    start = completion.rfind(_BOXED)
    if start < 0:
        return None
    begin = start + len(_BOXED)
    depth = 1
    for end in range(begin, len(completion)):
        char = completion[end]
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return completion[begin:end].strip() or None
    return None


def _canonical_token(token: str) -> str:
    """``"two"`` -> ``"2"``, ``"1.50"`` -> ``"1.5"``, ``"1.0"`` -> ``"1"``; other tokens unchanged."""
    if token in _NUMBER_WORDS:
        return _NUMBER_WORDS[token]
    if _DECIMAL.fullmatch(token):
        return token.rstrip("0").rstrip(".")
    return token


def normalize_answer(text: str) -> str:
    """A canonical form of an answer, so that equal answers written differently compare equal.

    Lowercases, collapses whitespace, strips surrounding quotes and trailing punctuation, drops a
    leading articles ("a", "an", "the") when more words follow, writes number words zero..twenty as
    digits and drops trailing decimal zeros, and maps yes/no forms (y, true, correct / n, false,
    incorrect) to "yes"/"no". Idempotent. May return "" (e.g. for "?"), which callers treat as no
    answer.
    """
    text = " ".join(text.lower().split())
    text = _LEADING_JUNK.sub("", text.rstrip(_TRAILING_PUNCTUATION + _QUOTES + " "), count=1)
    text = " ".join(_canonical_token(token) for token in text.split(" "))
    if text in _YES:
        return "yes"
    if text in _NO:
        return "no"
    return text


def answers_match(a: str | None, b: str | None) -> bool:
    """Whether two answers are equal once normalized; a missing or empty answer matches nothing."""
    if a is None or b is None:
        return False
    normalized = normalize_answer(a)
    return normalized != "" and normalized == normalize_answer(b)


def extract_question(completion: str) -> str | None:
    """The Questioner's question, or ``None`` if the completion is not a valid question.

    Valid means: exactly one ``<question>...</question>`` block, whose stripped content is non-empty,
    at most ``MAX_QUESTION_CHARS`` characters, ends with "?" and holds no other tags.
    """
    if completion.count(QUESTION_OPEN) != 1 or completion.count(QUESTION_CLOSE) != 1:
        return None
    start = completion.index(QUESTION_OPEN) + len(QUESTION_OPEN)
    end = completion.index(QUESTION_CLOSE)
    if end < start:
        return None
    question = completion[start:end].strip()
    if not question or len(question) > MAX_QUESTION_CHARS or not question.endswith("?"):
        return None
    return None if _TAG.search(question) else question
