"""Scoring completions item by item, a benchmark's result, and evaluating a model end to end."""

from __future__ import annotations

from collections import defaultdict

from ..answers import extract_answer, normalize_answer
from ..rewards import majority_vote
from ..generation import generate
from .adapters import get_adapter
from .core import Item, mean
from .judge import Judge
from .loading import default_source, load_items, messages
from .reading import SEVERAL, extract_choice, open_match, read_yes_no


def score_item(item: Item, completion: str, judge: Judge | None = None, decimals: int | None = None) -> dict:
    """``{"id", "answer", "prediction", "status", "score"}`` for one completion.

    ``prediction`` is what the completion answered (a letter, yes/no, or its boxed text); ``status`` is
    "answered", "no_answer" or "several". The score is 0/1 and 0 unless answered, except for a judged item
    with a judge: the judge grades the whole completion in [0, 1], boxed or not. ``decimals`` is the
    benchmark's rounding of numbers (``Adapter.decimals``).
    """
    if item.kind == "choice":
        prediction = extract_choice(completion, item.letters, item.options)
    elif item.kind == "yesno":
        prediction = read_yes_no(completion)
    else:
        prediction = extract_answer(completion)
    status = "no_answer" if prediction is None else "several" if prediction == SEVERAL else "answered"
    if item.kind == "judged" and judge is not None:
        score = judge.grade(item, completion)
    elif status != "answered":
        score = 0.0
    elif item.kind in ("open", "judged"):
        score = float(open_match(prediction, item.answer, decimals))
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
    records = [score_item(i, c, judge, adapter.decimals) for i, c in zip(items, completions, strict=True)]
    scores = [r["score"] for r in records]
    per_category = defaultdict(list)
    for item, s in zip(items, scores):
        if item.group.get("category") is not None:
            per_category[str(item.group["category"])].append(s)
    numbers = "equal" if adapter.decimals is None else f"equal rounded to {adapter.decimals} decimals"
    if judge is not None:
        scoring = (f"judge: {judge.model} at {judge.base} grades each whole response with MM-Vet's prompt "
                   f"(grades in [0, 1], cached in {judge.cache_path})")
    elif judged:
        scoring = ("exact/numeric match fallback: no judge given; MM-Vet's official score is an LLM judge's "
                   "grade, so this is a stricter, lower bound")
    else:
        scoring = f"deterministic: option letter, yes/no, or normalized exact match; numbers {numbers}"
    result = {
        "benchmark": adapter.name,
        "accuracy": mean(scores) or 0.0,
        "n": len(records),
        "no_answer": sum(r["status"] == "no_answer" for r in records),
        "several_answers": sum(r["status"] == "several" for r in records),
        "scoring": scoring,
        "per_category": {k: {"accuracy": mean(v), "n": len(v)} for k, v in sorted(per_category.items())},
    }
    if judge is not None:
        result["judge_requests"] = judge.requests - sent_before
    if adapter.metrics:
        result.update(adapter.metrics(items, scores))
    if details:
        result["items"] = records
    return result


def sampled_score(name: str, items: list[Item], samples: list[list[str]], entropies: list[list[float]],
                  judge: Judge | None = None) -> dict:
    """pass@1 (mean score of single samples), majority accuracy (the score of a sample that gave the
    majority of the M samples' predictions; 0 when none answered) and mean token entropy."""
    decimals = get_adapter(name).decimals
    pass_at_1, majority = [], []
    for item, completions in zip(items, samples, strict=True):
        records = [score_item(item, c, judge if item.kind == "judged" else None, decimals) for c in completions]
        pass_at_1.append(mean([r["score"] for r in records]))
        answered = [r["prediction"] if r["status"] == "answered" else None for r in records]
        label = majority_vote(answered).label
        winner = next((r for r, a in zip(records, answered) if a is not None and normalize_answer(a) == label), None)
        majority.append(winner["score"] if winner else 0.0)
    flat = [e for per_item in entropies for e in per_item]
    return {"pass_at_1": mean(pass_at_1) or 0.0, "majority_accuracy": mean(majority) or 0.0,
            "mean_entropy": mean(flat) or 0.0, "votes": len(samples[0]) if samples else 0}


def evaluate_benchmark(model, processor, name: str, source=None, limit: int | None = None,
                       judge: Judge | None = None, *, split: str | None = None, batch_size: int = 16,
                       max_new_tokens: int = 512, details: bool = False, votes: int = 0,
                       temperature: float = 1.0) -> dict:
    """Greedy answers of ``model`` to benchmark ``name``, scored.

    Returns ``{"benchmark", "accuracy", "n", "no_answer", "several_answers", "scoring", "per_category",
    "source", "split", ...}`` plus the benchmark's own metrics (HallusionBench: ``figure_accuracy``,
    ``question_pair_accuracy``; with a judge: ``judge_requests``) and, with ``details``, ``items``: one
    record per item. With ``votes`` M > 0 also the headroom measurement of M samples at ``temperature``
    (``sampled_score``: ``pass_at_1``, ``majority_accuracy``, ``mean_entropy``). Raises ``BenchmarkError`` (its message is for the user) on missing data or a failing
    judge.
    """
    adapter = get_adapter(name)
    items = load_items(name, source, limit, split)
    completions = generate(model, processor, [i.images for i in items], [messages(i) for i in items],
                           temperature=0.0, max_new_tokens=max_new_tokens, batch_size=batch_size)
    result = score(name, items, [c[0] for c in completions], judge, details)
    if votes:
        samples, entropies = generate(model, processor, [i.images for i in items], [messages(i) for i in items],
                                      n=votes, temperature=temperature, max_new_tokens=max_new_tokens,
                                      batch_size=batch_size, seed=0, with_entropy=True)
        result.update(sampled_score(name, items, samples, entropies, judge), temperature=temperature)
    result["source"] = str(default_source(name) if source is None else source)
    result["split"] = split or adapter.split
    return result
