"""Reading a completion's answer and matching it against the gold: option letters, yes/no, numbers.

- **letter** (``read_choice``): the boxed answer read as an option letter ("B", "(b)", "B. 15",
  "Option B", or exactly one option's text); without a boxed answer, the last "answer is X" /
  "Answer: X". Several letters ("A, C", "AC") give ``SEVERAL``; nothing readable gives None.
- **exact or numeric** (``open_match``): ``answers.answers_match``, or both sides read as one number
  with units stripped ("3.5 cm" = "3.5", "1,000" = "1000", "3/4" = "0.75", "60°" = "60") and equal;
  with ``decimals`` (MMMU and MATH-Vision: 2, as their evaluation code does) equal once rounded. MMMU
  golds written as a list literal, and MM-Vet golds with ``<OR>``, accept any element; MM-Vet ``<AND>``
  needs every element in the answer.
- **yes/no** (``read_yes_no``): the boxed answer's (else "answer is ...") yes/no form ("Yes", "true",
  "No, it is not", ...).
"""

from __future__ import annotations

import ast
import re

from ..answers import answers_match, extract_answer, normalize_answer

SEVERAL = "<several>"  # read_choice's verdict for an answer naming several options

_WRAPPER = re.compile(r"\\(?:text|mathrm|textbf|mathbf)\{([^{}]*)\}")
_LEAD_LETTER = re.compile(r"(?:(?:option|choice)\s*)?(?:\(([A-Za-z])\)|([A-Za-z])(?=$|[.:)]))", re.I)
_LETTER_LIST = re.compile(r"\(?[A-Z]\)?(?:\s*(?:,|/|&|and|or)?\s*\(?[A-Z]\)?)+\.?")
_ANSWER_IS_LETTER = re.compile(r"(?i:answer\s*(?:is|:))\s*(?i:option\s*)?\(?([A-Z])\)?(?![A-Za-z0-9])"
                               r"(\s*(?:,|/|&|and|or)\s*\(?[A-Z]\)?(?![A-Za-z0-9]))?")
_ANSWER_IS_YES_NO = re.compile(r"answer\s*(?:is|:)\s*\**\s*(yes|no)\b", re.I)


def _clean(text: str) -> str:
    return _WRAPPER.sub(r"\1", text).strip().strip("$").strip()


def read_choice(text: str, letters: str, options=()) -> str | None:
    """The option letter ``text`` names, ``SEVERAL`` if it names several of ``letters``, else None."""
    text = _clean(text)
    if _LETTER_LIST.fullmatch(text):
        found = set(re.findall(r"[A-Z]", re.sub(r"\b(?:and|or)\b", " ", text)))
        if len(found) > 1 and found <= set(letters):
            return SEVERAL
    lead = _LEAD_LETTER.match(text)
    if lead:
        return (lead.group(1) or lead.group(2)).upper()
    named = [letter for letter, option in zip(letters, options) if answers_match(text, str(option))]
    return named[0] if len(named) == 1 else None


def extract_choice(completion: str, letters: str, options=()) -> str | None:
    """The option letter a completion chose: from its boxed answer, else its last "answer is X"."""
    boxed = extract_answer(completion)
    if boxed is not None:
        return read_choice(boxed, letters, options)
    matches = list(_ANSWER_IS_LETTER.finditer(completion))
    if not matches:
        return None
    return SEVERAL if matches[-1].group(2) else matches[-1].group(1)


def read_yes_no(completion: str) -> str | None:
    """"yes" or "no" from the boxed answer (its first word will do), else from "answer is yes/no"."""
    boxed = extract_answer(completion)
    if boxed is None:
        matches = _ANSWER_IS_YES_NO.findall(completion)
        return matches[-1].lower() if matches else None
    text = normalize_answer(_clean(boxed))
    if text in ("yes", "no"):
        return text
    first = normalize_answer(text.split(" ")[0].rstrip(",.;:!"))
    return first if first in ("yes", "no") else None


_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d*\.?\d+)")
_UNIT = re.compile(r"[a-zµμ°%²³'\"][a-zµμ°%²³'\"^\d/.]*")
_NOT_UNITS = {"or", "and", "to", "of", "x", "times"}


def parse_number(text: str) -> float | None:
    """``text`` as one number, units and formatting stripped; None if it is not exactly one number."""
    t = _clean(text).lower().replace("\\%", "%").replace("\\$", "$")
    t = re.sub(r"\\[dt]?frac\{([^{}]*)\}\{([^{}]*)\}", r"\1/\2", t)
    t = re.sub(r"\^\{?\\circ\}?|\\circ|\\,|\\!|\\ ", " ", t).replace("$", " ").strip().rstrip(".")
    m = _NUMBER.match(t)
    if not m:
        return None
    value = float(m.group().replace(",", ""))
    rest = t[m.end():].strip()
    fraction = re.match(r"/\s*(\d*\.?\d+)", rest)
    if fraction:
        if float(fraction.group(1)) == 0:
            return None
        value /= float(fraction.group(1))
        rest = rest[fraction.end():].strip()
    words = rest.split()
    if len(words) > 2 or any(not _UNIT.fullmatch(w) or w in _NOT_UNITS for w in words):
        return None
    return value


def numbers_match(a: str | None, b: str | None, decimals: int | None = None) -> bool:
    """Both read as numbers (units stripped) and equal, or equal once rounded to ``decimals`` (Python's
    ``round``, as MMMU's and MATH-Vision's evaluation code use it)."""
    x, y = (parse_number(a), parse_number(b)) if a is not None and b is not None else (None, None)
    if x is None or y is None:
        return False
    return x == y if decimals is None else round(x, decimals) == round(y, decimals)


def open_match(prediction: str | None, gold: str, decimals: int | None = None) -> bool:
    """Normalized exact match or numeric match; ``gold`` may list alternatives (a list literal, or ``<OR>``)
    or required parts (``<AND>``: each must appear in the prediction)."""
    if prediction is None:
        return False
    if "<AND>" in gold:
        said = normalize_answer(prediction)
        return all(re.search(rf"(?<!\w){re.escape(normalize_answer(part))}(?!\w)", said)
                   for part in gold.split("<AND>") if normalize_answer(part))
    return any(answers_match(prediction, g) or numbers_match(prediction, g, decimals) for g in _alternatives(gold))


def _alternatives(gold: str) -> list[str]:
    gold = gold.strip()
    if gold.startswith("[") and gold.endswith("]"):
        try:
            values = ast.literal_eval(gold)
            if isinstance(values, (list, tuple)) and values:
                return [str(v) for v in values]
        except (ValueError, SyntaxError):
            pass
    return [g.strip() for g in gold.split("<OR>")]
