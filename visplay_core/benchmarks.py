"""The paper's real benchmarks: load, prompt the Reasoner, score deterministically (MM-Vet: optionally judged).

Seven adapters, one per benchmark, each a field list plus a row-to-item function:

==============  =======================  ==========  =====================================================
name            default datasets name    split       scored as
==============  =======================  ==========  =====================================================
mmmu            lmms-lab/MMMU            validation  option letter; open questions exact or numeric
mm-vet          lmms-lab/MMVet           test        LLM judge (0..1) when given one, else exact or numeric
realworldqa     lmms-lab/RealWorldQA     test        letter when the answer is one (options in question)
visnumbench     GML-FMGroup/VisNumBench  train       option letter (options "(a) .. (b) ..")
mathverse       AI4Math/MathVerse        testmini    letter (choices in the question), exact or numeric
math-vision     MathLLMs/MathVision      test        letter when the item has options, exact or numeric
hallusionbench  lmms-lab/HallusionBench  image       yes/no; figure and question-pair accuracy
==============  =======================  ==========  =====================================================

Data (``load_items``) comes from ``./data/<name>`` by default, or from ``source``: a parquet file, a
folder of parquet files (a hub snapshot: only the files named after the split are read when there are
such files), a folder written by ``datasets``' ``save_to_disk``, or a ``datasets`` name (``owner/name``,
read through ``datasets.load_dataset``, so from its local cache when offline). Missing data or columns
raise ``BenchmarkDataError`` naming the benchmark and the place looked at.

Scoring rules, one small function each:

- **letter** (``read_choice``): the boxed answer read as an option letter ("B", "(b)", "B. 15",
  "Option B", or exactly one option's text); without a boxed answer, the last "answer is X" /
  "Answer: X". Several letters ("A, C", "AC") are wrong and counted as ``several_answers``; nothing
  readable is wrong and counted as ``no_answer``.
- **exact or numeric** (``open_match``): ``answers.answers_match``, or both sides read as one number
  with units stripped ("3.5 cm" = "3.5", "1,000" = "1000", "3/4" = "0.75", "60°" = "60") and within a
  relative 1e-2. No boxed answer counts as ``no_answer``. MMMU golds written as a list literal, and
  MM-Vet golds with ``<OR>``, accept any element; MM-Vet ``<AND>`` needs every element in the answer.
- **yes/no** (``read_yes_no``): the boxed answer's (else "answer is ...") yes/no form ("Yes", "true",
  "No, it is not", ...); HallusionBench's ``gt_answer`` "1"/"0" is yes/no.

HallusionBench (as its official ``utils.py``): ``accuracy`` is aAcc (per question);
``figure_accuracy`` is fAcc, the share of figures (category, subcategory, set_id, figure_id) whose
questions are all right, leaving out VS figure 0 (the no-image question); ``question_pair_accuracy`` is
qAcc, the share of questions (category, subcategory, set_id, question_id) answered right on every
figure they are asked about.

MM-Vet's official score is a GPT-4 grade in [0, 1] per item. ``Judge`` asks any OpenAI-compatible
chat-completions endpoint (a local vLLM server, ...) for that grade; its API key comes from the
environment variable ``VISPLAY_JUDGE_API_KEY`` and is never logged or returned; grades are cached in a
JSON file keyed by (item id, model answer, judge model), so re-scoring sends no request. Without a
judge MM-Vet is scored by the exact/numeric rule and the result says so in ``scoring``.
"""

from __future__ import annotations

import ast
import hashlib
import io
import json
import os
import re
import urllib.error
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from PIL import Image

from . import prompts
from .answers import answers_match, extract_answer, normalize_answer
from .generation import generate

DATA_ROOT = Path("data")
LETTERS = "ABCDEFGHIJ"
DEFAULT_LETTERS = "ABCDE"  # when a choice item's options are not known (e.g. drawn inside the image)
CHOICE_HINT = "Answer with the letter of the correct option."
YES_NO_HINT = "Answer yes or no."
IN_IMAGE = "Answer the question shown in the image."
SEVERAL = "<several>"  # read_choice's verdict for an answer naming several options
REL_TOL = 1e-2
JUDGE_KEY_ENV = "VISPLAY_JUDGE_API_KEY"


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


# ----------------------------------------------------------------------------------------------------
# Reading answers


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


_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d*\.?\d+)")
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


def numbers_match(a: str | None, b: str | None, rel_tol: float = REL_TOL) -> bool:
    """Both read as numbers (units stripped) and within ``rel_tol`` of ``b``."""
    x, y = (parse_number(a), parse_number(b)) if a is not None and b is not None else (None, None)
    if x is None or y is None:
        return False
    return x == y if y == 0 else abs(x - y) <= rel_tol * abs(y)


def open_match(prediction: str | None, gold: str) -> bool:
    """Normalized exact match or numeric match; ``gold`` may list alternatives (a list literal, or ``<OR>``)
    or required parts (``<AND>``: each must appear in the prediction)."""
    if prediction is None:
        return False
    if "<AND>" in gold:
        said = normalize_answer(prediction)
        return all(re.search(rf"(?<!\w){re.escape(normalize_answer(part))}(?!\w)", said)
                   for part in gold.split("<AND>") if normalize_answer(part))
    return any(answers_match(prediction, g) or numbers_match(prediction, g) for g in _alternatives(gold))


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


# ----------------------------------------------------------------------------------------------------
# Building items


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


def _images(*values) -> list:
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
    found = _OPTION_LINE.findall(question)
    options = []
    for letter, text in found:
        if letter == LETTERS[len(options)]:
            options.append(text)
    return options


def _choice(id, question, options, answer, images, group, listed=True) -> Item:
    """A multiple-choice item; ``listed`` False when the question already lists its options."""
    options = [str(o) for o in options]
    letters = LETTERS[:len(options)] or DEFAULT_LETTERS
    if listed and options != list(letters):  # options "A".."E" are drawn in the image (MATH-Vision)
        question = question.rstrip() + "\n" + "\n".join(f"{letter}. {o}" for letter, o in zip(letters, options))
    gold = read_choice(str(answer), letters, options) or str(answer).strip()
    return Item(str(id), f"{question.rstrip()}\n{CHOICE_HINT}", images, gold, "choice", letters, tuple(options), group)


def _open(id, question, answer, images, group, kind="open") -> Item:
    return Item(str(id), question.strip(), images, str(answer).strip(), kind, group=group)


def _mmmu(row, i):
    images = _images(*(row.get(f"image_{k}") for k in range(1, 8)))
    group = {"category": row["question_type"]}
    if row["question_type"] == "multiple-choice":
        return _choice(row["id"], row["question"], parse_options(row["options"]), row["answer"], images, group)
    return _open(row["id"], row["question"], row["answer"], images, group)


def _mmvet(row, i):
    return _open(row["question_id"], row["question"], row["answer"], _images(row["image"]),
                 {"category": row.get("capability")}, kind="judged")


_ANSWER_DIRECTLY = re.compile(r"\n?Please answer directly[^\n]*", re.I)


def _realworldqa(row, i):
    question = _ANSWER_DIRECTLY.sub("", row["question"]).strip()  # our prompt asks for a boxed answer
    options = options_in_text(question)
    answer = str(row["answer"]).strip()
    if options and re.fullmatch(r"[A-J]", answer):
        return _choice(f"realworldqa-{i}", question, options, answer, _images(row["image"]), {}, listed=False)
    return _open(f"realworldqa-{i}", question, answer, _images(row["image"]), {})


def _visnumbench(row, i):
    return _choice(row["id"], row["question"], parse_options(row["option"]), row["answer"], _images(row["image"]),
                   {"category": row.get("Attributes")})


def _mathverse(row, i):
    group = {"category": row.get("problem_version")}
    images = _images(row["image"])
    question = row["question"].strip() or IN_IMAGE  # "Vision Only" items show the whole question in the image
    if row["question_type"] == "multi-choice":
        return _choice(row["sample_index"], question, options_in_text(question), row["answer"], images, group,
                       listed=False)
    return _open(row["sample_index"], question, row["answer"], images, group)


def _mathvision(row, i):
    images = _images(row.get("decoded_image"), row.get("image"))[:1]
    group = {"category": row.get("subject")}
    options = parse_options(row["options"])
    if options:
        return _choice(row["id"], row["question"], options, row["answer"], images, group)
    return _open(row["id"], row["question"], row["answer"], images, group)


def _hallusionbench(row, i):
    key = {k: str(row[k]) for k in ("category", "subcategory", "set_id", "figure_id", "question_id")}
    gold = {"1": "yes", "0": "no"}.get(str(row["gt_answer"]).strip(), str(row["gt_answer"]).strip().lower())
    return Item("/".join(key.values()), f"{row['question'].strip()}\n{YES_NO_HINT}", _images(row["image"]), gold,
                "yesno", group=key)


# ----------------------------------------------------------------------------------------------------
# Per-benchmark metrics beyond accuracy


def _mean(values) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None


def hallusion_metrics(items: list[Item], scores: list[float]) -> dict:
    """fAcc and qAcc as HallusionBench's ``utils.py`` defines them (see the module docstring)."""
    figures, questions = defaultdict(list), defaultdict(list)
    for item, score in zip(items, scores):
        g = item.group
        if not (g["category"] == "VS" and g["figure_id"] == "0"):
            figures[(g["category"], g["subcategory"], g["set_id"], g["figure_id"])].append(score == 1)
        questions[(g["category"], g["subcategory"], g["set_id"], g["question_id"])].append(score == 1)
    return {"figure_accuracy": _mean(all(v) for v in figures.values()), "figures": len(figures),
            "question_pair_accuracy": _mean(all(v) for v in questions.values()), "question_pairs": len(questions)}


# ----------------------------------------------------------------------------------------------------
# The registry


@dataclass(frozen=True)
class Adapter:
    name: str
    hub: str  # the datasets name suggested when no data is found
    split: str
    fields: tuple  # columns every row must have
    to_item: Callable[[dict, int], Item]
    config: str | None = None
    metrics: Callable[[list, list], dict] | None = None


ADAPTERS = {a.name: a for a in [
    Adapter("mmmu", "lmms-lab/MMMU", "validation",
            ("id", "question", "options", "answer", "question_type", "image_1"), _mmmu),
    Adapter("mm-vet", "lmms-lab/MMVet", "test", ("question_id", "question", "answer", "image"), _mmvet),
    Adapter("realworldqa", "lmms-lab/RealWorldQA", "test", ("question", "answer", "image"), _realworldqa),
    Adapter("visnumbench", "GML-FMGroup/VisNumBench", "train", ("id", "question", "option", "answer", "image"),
            _visnumbench),
    Adapter("mathverse", "AI4Math/MathVerse", "testmini",
            ("sample_index", "question", "answer", "question_type", "image"), _mathverse, config="testmini"),
    Adapter("math-vision", "MathLLMs/MathVision", "test", ("id", "question", "options", "answer", "decoded_image"),
            _mathvision),
    Adapter("hallusionbench", "lmms-lab/HallusionBench", "image",
            ("category", "subcategory", "set_id", "figure_id", "question_id", "question", "gt_answer", "image"),
            _hallusionbench, metrics=hallusion_metrics),
]}


def get_adapter(name: str) -> Adapter:
    key = re.sub(r"[-_ ]", "", name.lower())
    for adapter in ADAPTERS.values():
        if adapter.name.replace("-", "") == key:
            return adapter
    raise BenchmarkError(f"unknown benchmark {name!r} (known: {', '.join(ADAPTERS)})")


# ----------------------------------------------------------------------------------------------------
# Loading


def _missing(adapter: Adapter, where, detail: str) -> BenchmarkDataError:
    return BenchmarkDataError(
        f"{adapter.name}: {detail} at {where} (expected a parquet file, a save_to_disk folder, or a datasets name "
        f"such as {adapter.hub}; see README)")


def _check_columns(adapter: Adapter, columns, where) -> None:
    lacking = [f for f in adapter.fields if f not in columns]
    if lacking:
        raise BenchmarkDataError(f"{adapter.name}: data at {where} lacks column(s) {', '.join(lacking)} "
                                 f"(has: {', '.join(columns)}); is it {adapter.hub}?")


def _parquet_rows(adapter: Adapter, files: list[Path], limit: int | None, where) -> list[dict]:
    import pyarrow.parquet as pq

    rows: list[dict] = []
    for path in files:
        parquet = pq.ParquetFile(path)
        _check_columns(adapter, parquet.schema_arrow.names, path)
        for batch in parquet.iter_batches(batch_size=64):
            rows.extend(batch.to_pylist())
            if limit is not None and len(rows) >= limit:
                return rows[:limit]
    return rows


def _dataset_rows(adapter: Adapter, dataset, split: str, limit: int | None, where) -> list[dict]:
    if hasattr(dataset, "keys"):  # a DatasetDict
        if split not in dataset:
            raise BenchmarkDataError(f"{adapter.name}: no split {split!r} at {where} (has: {', '.join(dataset)})")
        dataset = dataset[split]
    _check_columns(adapter, dataset.column_names, where)
    count = len(dataset) if limit is None else min(limit, len(dataset))
    return [dataset[i] for i in range(count)]


def _rows(adapter: Adapter, source, split: str, limit: int | None) -> list[dict]:
    path = Path(source)
    if path.is_file():
        if path.suffix != ".parquet":
            raise _missing(adapter, path, "not a parquet file")
        return _parquet_rows(adapter, [path], limit, path)
    if path.is_dir():
        if (path / "dataset_dict.json").exists() or (path / "state.json").exists():
            import datasets

            return _dataset_rows(adapter, datasets.load_from_disk(str(path)), split, limit, path)
        files = sorted(path.rglob("*.parquet"))
        of_split = [f for f in files if f.name.startswith(split)]
        if not files:
            raise _missing(adapter, path, "no parquet files or save_to_disk dataset")
        return _parquet_rows(adapter, of_split or files, limit, path)
    local = path.parent.is_dir() and path.parent != Path(".") or path == default_source(adapter.name)
    if isinstance(source, str) and re.fullmatch(r"[\w-][\w.-]*/[\w.-]+", source) and not local:  # owner/name
        import datasets

        try:
            dataset = datasets.load_dataset(source, adapter.config, split=split)
        except Exception as e:  # noqa: BLE001 - any failure to load is reported as missing data
            first_line = (str(e).strip().splitlines() or [""])[0]
            raise BenchmarkDataError(f"{adapter.name}: no data at {source} (no such file or folder), and loading it "
                                     f"as a datasets name (split {split!r}) failed: {type(e).__name__}: "
                                     f"{first_line}") from None
        return _dataset_rows(adapter, dataset, split, limit, source)
    raise _missing(adapter, source, "no data")


def default_source(name: str) -> Path:
    return DATA_ROOT / get_adapter(name).name


def load_items(name: str, source=None, limit: int | None = None, split: str | None = None) -> list[Item]:
    """The first ``limit`` items (all when None) of benchmark ``name`` from ``source`` (default ./data/<name>)."""
    adapter = get_adapter(name)
    source = default_source(name) if source is None else source
    rows = _rows(adapter, source, split or adapter.split, limit)
    if not rows:
        raise _missing(adapter, source, "no items")
    return [adapter.to_item(row, i) for i, row in enumerate(rows)]


def messages(item: Item) -> list[dict]:
    """The Reasoner's chat messages for ``item``: its images, then its question."""
    return prompts.reasoner_messages(item.question, n_images=len(item.images))


# ----------------------------------------------------------------------------------------------------
# The MM-Vet judge


JUDGE_PROMPT = (
    "You grade answers to questions about images. Compare the model answer with the ground truth and reply "
    "with one correctness score from 0.0 (totally wrong) to 1.0 (totally right), in steps of 0.1. In the "
    "ground truth, <AND> means every listed element must be in the answer for full credit and <OR> means any "
    "one of them is enough. Reply with the number only.\n\n"
    "Question: {question}\nGround truth: {answer}\nModel answer: {prediction}\nScore:"
)


class Judge:
    """An OpenAI-compatible chat-completions endpoint grading open answers in [0, 1], with a per-item cache.

    ``url`` is the API base (``http://host:8000/v1``) or the full ``.../chat/completions`` address; ``model``
    defaults to the first model the endpoint lists (what a vLLM server serves). The key, if any, is read from
    ``$VISPLAY_JUDGE_API_KEY`` at each request and kept nowhere else.
    """

    def __init__(self, url: str, model: str | None = None, cache_path: str | Path = ".visplay/judge-cache.json",
                 timeout: float = 60.0):
        self.base = re.sub(r"/chat/completions/?$", "", url.rstrip("/"))
        self._model, self.cache_path, self.timeout = model, Path(cache_path), timeout
        self.requests = 0  # requests sent by this instance (the cache's savings are visible here)

    def _call(self, path: str, body: dict | None = None) -> dict:
        headers = {"Content-Type": "application/json"}
        if os.environ.get(JUDGE_KEY_ENV):
            headers["Authorization"] = f"Bearer {os.environ[JUDGE_KEY_ENV]}"
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, headers=headers)
        self.requests += 1
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as e:
            raise JudgeError(f"mm-vet: judge at {self.base}{path} answered HTTP {e.code} {e.reason}") from None
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise JudgeError(f"mm-vet: judge at {self.base}{path} failed: {getattr(e, 'reason', e)}") from None

    @property
    def model(self) -> str:
        if self._model is None:
            listed = self._call("/models").get("data") or []
            if not listed:
                raise JudgeError(f"mm-vet: judge at {self.base} lists no models; give one explicitly")
            self._model = listed[0]["id"]
        return self._model

    def _load_cache(self) -> dict:
        return json.loads(self.cache_path.read_text()) if self.cache_path.exists() else {}

    def _save_cache(self, cache: dict) -> None:
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.cache_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(cache, indent=0, sort_keys=True))
        tmp.replace(self.cache_path)

    def grade(self, item: Item, prediction: str) -> float:
        """The judge's score for ``prediction`` to ``item``, from the cache when it has been asked before."""
        key = hashlib.sha256(json.dumps([item.id, prediction, self.model]).encode()).hexdigest()
        cache = self._load_cache()
        if key not in cache:
            prompt = JUDGE_PROMPT.format(question=item.question, prediction=prediction,
                                         answer=item.answer.replace("<AND>", " <AND> ").replace("<OR>", " <OR> "))
            reply = self._call("/chat/completions", {"model": self.model, "temperature": 0.0, "max_tokens": 8,
                                                     "messages": [{"role": "user", "content": prompt}]})
            try:
                text = reply["choices"][0]["message"]["content"] or ""
            except (KeyError, IndexError, TypeError):
                raise JudgeError(f"mm-vet: judge at {self.base} sent no chat completion") from None
            number = re.search(r"\d*\.?\d+", text)
            score = min(1.0, max(0.0, float(number.group()))) if number else 0.0
            cache[key] = {"item": item.id, "model": self.model, "score": score, "unparsed": number is None}
            self._save_cache(cache)
        return cache[key]["score"]


# ----------------------------------------------------------------------------------------------------
# Scoring and evaluating


def score_item(item: Item, completion: str, judge: Judge | None = None) -> dict:
    """``{"id", "answer", "prediction", "status", "score"}`` for one completion; status is "answered",
    "no_answer" or "several"; score is 0/1 (a judge's grade in [0, 1] for judged items with a judge)."""
    if item.kind == "choice":
        prediction = extract_choice(completion, item.letters, item.options)
    elif item.kind == "yesno":
        prediction = read_yes_no(completion)
    else:
        prediction = extract_answer(completion)
    status = "no_answer" if prediction is None else "several" if prediction == SEVERAL else "answered"
    if status != "answered":
        score = 0.0
    elif item.kind == "judged" and judge is not None:
        score = judge.grade(item, prediction)
    elif item.kind in ("open", "judged"):
        score = float(open_match(prediction, item.answer))
    else:
        score = float(prediction == item.answer)
    return {"id": item.id, "answer": item.answer, "prediction": prediction, "status": status, "score": score}


def score(name: str, items: list[Item], completions: list[str], judge: Judge | None = None,
          details: bool = False) -> dict:
    """The benchmark's result for these completions (one per item); see ``evaluate_benchmark``."""
    adapter = get_adapter(name)
    judged = any(i.kind == "judged" for i in items)
    judge = judge if judged else None
    sent_before = judge.requests if judge else 0
    records = [score_item(i, c, judge) for i, c in zip(items, completions, strict=True)]
    scores = [r["score"] for r in records]
    per_category = defaultdict(list)
    for item, s in zip(items, scores):
        if item.group.get("category") is not None:
            per_category[str(item.group["category"])].append(s)
    if judge is not None:
        scoring = f"judge: {judge.model} at {judge.base} (grades in [0, 1], cached in {judge.cache_path})"
    elif judged:
        scoring = ("exact/numeric match fallback: no judge given; MM-Vet's official score is an LLM judge's "
                   "grade, so this is a stricter, lower bound")
    else:
        scoring = "deterministic: option letter, yes/no, or normalized exact / numeric (relative 1e-2) match"
    result = {
        "benchmark": adapter.name,
        "accuracy": _mean(scores) or 0.0,
        "n": len(records),
        "no_answer": sum(r["status"] == "no_answer" for r in records),
        "several_answers": sum(r["status"] == "several" for r in records),
        "scoring": scoring,
        "per_category": {k: {"accuracy": _mean(v), "n": len(v)} for k, v in sorted(per_category.items())},
    }
    if judge is not None:
        result["judge_requests"] = judge.requests - sent_before
    if adapter.metrics:
        result.update(adapter.metrics(items, scores))
    if details:
        result["items"] = records
    return result


def evaluate_benchmark(model, processor, name: str, source=None, limit: int | None = None,
                       judge: Judge | None = None, *, split: str | None = None, batch_size: int = 16,
                       max_new_tokens: int = 512, details: bool = False) -> dict:
    """Greedy answers of ``model`` to benchmark ``name``, scored.

    Returns ``{"benchmark", "accuracy", "n", "no_answer", "several_answers", "scoring", "per_category",
    "source", "split", ...}`` plus the benchmark's own metrics (HallusionBench: ``figure_accuracy``,
    ``question_pair_accuracy``; with a judge: ``judge_requests``) and, with ``details``, ``items``: one
    record per item. Raises ``BenchmarkError`` (its message is for the user) on missing data or a failing
    judge.
    """
    adapter = get_adapter(name)
    items = load_items(name, source, limit, split)
    completions = generate(model, processor, [i.images for i in items], [messages(i) for i in items],
                           temperature=0.0, max_new_tokens=max_new_tokens, batch_size=batch_size)
    result = score(name, items, [c[0] for c in completions], judge, details)
    result["source"] = str(default_source(name) if source is None else source)
    result["split"] = split or adapter.split
    return result
