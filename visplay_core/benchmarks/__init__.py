"""The paper's real benchmarks: load, prompt the Reasoner, score deterministically (MM-Vet: judged).

==============  =======================  =====================  ==========  ===========================================
name            datasets name            also at                split       scored as
==============  =======================  =====================  ==========  ===========================================
mmmu            lmms-lab/MMMU            MMMU/MMMU              validation  option letter; open: exact, numbers to 2 dp
mm-vet          lmms-lab/MMVet           whyu/mm-vet            test        LLM judge (0..1) when given one, else exact
realworldqa     lmms-lab/RealWorldQA     xai-org/RealworldQA    test        letter when the answer is one, else exact
visnumbench     GML-FMGroup/VisNumBench                         train       option letter (options "(a) .. (b) ..")
mathverse       AI4Math/MathVerse                               testmini    letter (choices in the question), exact
math-vision     MathLLMs/MathVision                             test        letter when it has options; numbers to 2 dp
hallusionbench  lmms-lab/HallusionBench                         image       yes/no; figure and question-pair accuracy
==============  =======================  =====================  ==========  ===========================================

The package's parts: ``core`` (the item, the adapter, building items from rows), ``reading`` (reading
answers and the matching rules), ``adapters/`` (one module per benchmark: its row-to-item mapping and
its metrics; a new benchmark is a new module there), ``loading`` (files, splits, unique ids), ``judge``
(MM-Vet's grader) and ``scoring`` (per item, per benchmark, end to end; imported on first use, since it
imports torch).

Data (``load_items``) comes from ``./data/<name>`` by default, or from ``source``: a parquet file, a
folder of parquet files (a hub snapshot: the files of the split, named ``<split>.parquet`` or
``<split>-...``, are read; other splits and configs beside them are not), a folder written by
``datasets``' ``save_to_disk``, or a ``datasets`` name (``owner/name``, read through
``datasets.load_dataset``, so from its local cache when offline). Missing data or columns, a folder
without the split, or an item id listed twice raise ``BenchmarkDataError`` naming the benchmark and the
place looked at.
"""

from .adapters import ADAPTERS, get_adapter
from .core import (CHOICE_HINT, IN_IMAGE, YES_NO_HINT, Adapter, BenchmarkDataError, BenchmarkError, Item, JudgeError,
                   options_in_text, parse_options, to_image)
from .judge import JUDGE_KEY_ENV, MMVET_PROMPT, MMVET_RETRY, Judge, mmvet_prompt, read_grade
from .loading import default_source, load_items, messages, split_files
from .reading import SEVERAL, extract_choice, numbers_match, open_match, parse_number, read_choice, read_yes_no

SCORING = ("evaluate_benchmark", "score", "score_item")


def __getattr__(name: str):
    """``scoring`` runs the model, so it imports torch: it is loaded when first asked for, which keeps the
    rest of the package (the adapters' names, for the command line's help) light to import."""
    if name in SCORING:
        from . import scoring

        return getattr(scoring, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "ADAPTERS", "CHOICE_HINT", "IN_IMAGE", "JUDGE_KEY_ENV", "MMVET_PROMPT", "MMVET_RETRY", "SEVERAL", "YES_NO_HINT",
    "Adapter", "BenchmarkDataError", "BenchmarkError", "Item", "Judge", "JudgeError", "default_source",
    "evaluate_benchmark", "extract_choice", "get_adapter", "load_items", "messages", "mmvet_prompt", "numbers_match",
    "open_match", "options_in_text", "parse_number", "parse_options", "read_choice", "read_grade", "read_yes_no",
    "score", "score_item", "split_files", "to_image",
]
