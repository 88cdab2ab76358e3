"""What every benchmark shares: the item, the adapter that describes a benchmark, errors, and the helpers
that turn a dataset row into an item (images, option lists, choice and open items)."""

from __future__ import annotations

import ast
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from PIL import Image

from .reading import read_choice

LETTERS = "ABCDEFGHIJ"
DEFAULT_LETTERS = "ABCDE"  # when a choice item's options are not known (e.g. drawn inside the image)
CHOICE_HINT = "Answer with the letter of the correct option."
YES_NO_HINT = "Answer yes or no."
IN_IMAGE = "Answer the question shown in the image."


class BenchmarkError(RuntimeError):
    """A benchmark could not be evaluated; the message says why and is meant for the user as is."""


class BenchmarkDataError(BenchmarkError):
    """A benchmark's data is missing or not in the expected schema."""


class JudgeError(BenchmarkError):
    """The MM-Vet judge endpoint failed."""


@dataclass
class Item:
    """One benchmark question, ready to prompt and score."""

    id: str
    question: str  # the text shown to the Reasoner (options lettered, answer hint appended)
    images: list
    answer: str  # gold: an option letter, "yes"/"no", or a free answer
    kind: str  # "choice" | "open" | "yesno" | "judged"
    letters: str = ""  # valid option letters of a choice item
    options: tuple = ()  # option texts of a choice item, when known
    group: dict = field(default_factory=dict)  # fields some metrics group by


@dataclass(frozen=True)
class Adapter:
    """One benchmark: where its data lives, which columns a row must have, and how a row becomes an item."""

    name: str
    hub: str  # the datasets name suggested when no data is found
    split: str
    fields: tuple  # columns every row must have
    to_item: Callable[[dict, int], Item]  # (row, row index) -> item
    also: str = ""  # a second known location of the same data
    config: str | None = None  # the datasets config to load by name
    decimals: int | None = None  # numbers are compared rounded to this many decimals (None: equal values)
    metrics: Callable[[list, list], dict] | None = None  # (items, scores) -> metrics beyond accuracy


def mean(values) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None


def to_image(value) -> Image.Image | None:
    """An RGB image from a PIL image, a datasets Image struct ``{"bytes", "path"}``, or raw bytes."""
    if isinstance(value, dict):
        if value.get("bytes"):
            value = value["bytes"]
        elif value.get("path") and Path(value["path"]).is_file():
            value = Image.open(value["path"])
        else:
            return None
    if isinstance(value, (bytes, bytearray)):
        value = Image.open(io.BytesIO(value))
    return value.convert("RGB") if isinstance(value, Image.Image) else None


def images(*values) -> list:
    """The images among ``values`` (missing ones, such as a text-only item's, are left out)."""
    return [image for image in map(to_image, values) if image is not None]


_MARKED_OPTION = re.compile(r"\(([a-jA-J])\)\s*")
_OPTION_LINE = re.compile(r"^\s*\(?([A-J])\)?\s*[.:)]\s*(.+?)\s*$", re.M)


def parse_options(value) -> list[str]:
    """Option texts from a list, a list literal ("['1', '2']"), or a string marked "(a) 1 (b) 2"."""
    if isinstance(value, str) and value.strip().startswith("["):
        try:
            value = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            pass
    if isinstance(value, str):
        parts = _MARKED_OPTION.split(value)
        value = parts[2::2] if len(parts) > 2 else [line for line in value.splitlines() if line.strip()]
    return [str(v).strip() for v in (value or [])]


def options_in_text(question: str) -> list[str]:
    """The "A. ..." / "A: ..." option lines of a question that lists its options, in order from A."""
    options = []
    for letter, text in _OPTION_LINE.findall(question):
        if letter == LETTERS[len(options)]:
            options.append(text)
    return options


def choice_item(id, question, options, answer, images, group, listed=True) -> Item:
    """A multiple-choice item; ``listed`` False when the question already lists its options."""
    options = [str(o) for o in options]
    letters = LETTERS[:len(options)] or DEFAULT_LETTERS
    if listed and options != list(letters):  # options "A".."E" are drawn in the image (MATH-Vision)
        question = question.rstrip() + "\n" + "\n".join(f"{letter}. {o}" for letter, o in zip(letters, options))
    gold = read_choice(str(answer), letters, options) or str(answer).strip()
    return Item(str(id), f"{question.rstrip()}\n{CHOICE_HINT}", images, gold, "choice", letters, tuple(options), group)


def open_item(id, question, answer, images, group, kind="open") -> Item:
    """A free-answer item (``kind`` "judged" for one an LLM judge grades when given one)."""
    return Item(str(id), question.strip(), images, str(answer).strip(), kind, group=group)
