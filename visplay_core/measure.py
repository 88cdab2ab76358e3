"""What the hidden ground truth says about an iteration (embedded world only; never used to train).

For each set of questions (the pre-update rollout, the candidates, the curated set): how many are valid
questions of the grammar for their image, how often the majority-vote pseudo-label is the true answer,
and for candidates the calibration of pseudo-labels: true accuracy per confidence bin and per kind.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict

from . import world
from .bench import PER_KIND, per_kind_of
from .answers import answers_match

BINS = 10


def _truth(rows: list[dict], scenes: dict[str, world.Scene]) -> list[tuple[dict, str | None]]:
    return [(r, world.oracle(scenes[r["image_id"]], r["question"])) for r in rows
            if r.get("question") is not None and r["image_id"] in scenes]


def label_accuracy(rows: list[dict], scenes: dict[str, world.Scene]) -> dict:
    """Oracle validity of the questions, and the true accuracy of the pseudo-labels of the valid ones;
    None where there is nothing to judge (no question, or no valid labelled one)."""
    judged = _truth(rows, scenes)
    valid = [(r, t) for r, t in judged if t is not None]
    labelled = [(r, t) for r, t in valid if r.get("pseudo_label") is not None]
    return {
        "oracle_validity": len(valid) / len(judged) if judged else None,
        "label_accuracy": sum(answers_match(r["pseudo_label"], t) for r, t in labelled) / len(labelled) if labelled else None,
        "n": len(judged),
    }


def calibration(rows: list[dict], scenes: dict[str, world.Scene]) -> list[dict]:
    """True accuracy of pseudo-labels per confidence bin (invalid questions count as wrong)."""
    bins: dict[int, list[bool]] = defaultdict(list)
    for r, t in _truth(rows, scenes):
        if r.get("confidence") is not None and r.get("pseudo_label") is not None:
            bins[min(int(r["confidence"] * BINS), BINS - 1)].append(t is not None and answers_match(r["pseudo_label"], t))
    return [{"low": b / BINS, "high": (b + 1) / BINS, "n": len(v), "accuracy": sum(v) / len(v)}
            for b, v in sorted(bins.items())]


def per_kind(rows: list[dict], scenes: dict[str, world.Scene]) -> dict[str, dict]:
    by_kind: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        if r.get("question") is not None:
            by_kind[world.question_kind(r["question"]) or "invalid"].append(r)
    return {k: {"n": len(v), **label_accuracy(v, scenes)} for k, v in sorted(by_kind.items())}


def measure_iteration(files: dict[str, list[dict]], scenes: dict[str, world.Scene]) -> dict:
    """Flat metrics (for MLflow) and tables (for the report) of an iteration's question sets."""
    if not scenes:
        return {}
    out: dict = {}
    for name, rows in files.items():
        acc = label_accuracy(rows, scenes)
        out[f"{name}.oracle_validity"] = acc["oracle_validity"]
        out[f"{name}.label_accuracy"] = acc["label_accuracy"]
        out[f"{name}.kinds"] = dict(Counter(world.question_kind(r["question"]) or "invalid"
                                            for r in rows if r.get("question")))
    if "curated" in files:
        out["pseudo_label_accuracy"] = out["curated.label_accuracy"]
    if "candidates" in files:
        out["calibration"] = calibration(files["candidates"], scenes)
        out["candidates.per_kind"] = per_kind(files["candidates"], scenes)
    return out


def noise(p: float, n_items: int | None, spread: float = 0.0) -> float:
    """How far apart two accuracies must be to count as different: the spread over seeds, and at least two
    binomial standard errors of an evaluation of ``n_items`` at accuracy ``p``."""
    return max(spread, 2 * math.sqrt(p * (1 - p) / n_items) if n_items else 0.0)


def headroom_noise(vote_wins: float, greedy_wins: float, n_items: int) -> float:
    """Two standard errors of the headroom (majority − greedy accuracy on the same items): per item the
    difference is +1 (the vote wins), −1 (greedy wins) or 0, with variance ``vote_wins + greedy_wins −
    headroom²``."""
    headroom = vote_wins - greedy_wins
    return 2 * math.sqrt(max(0.0, vote_wins + greedy_wins - headroom * headroom) / n_items)


def base_headroom(metrics: dict, bench: str = "shapes") -> dict | None:
    """The headroom of a benchmark evaluation's metrics (``<bench>_majority_accuracy`` − ``<bench>_accuracy``,
    logged by ``benchmark_eval`` with ``eval.votes``): what majority-vote self-play can at most distill,
    its noise, and whether it is within that noise. None when the evaluation sampled no votes."""
    if f"{bench}_majority_accuracy" not in metrics:
        return None
    greedy, majority = metrics[f"{bench}_accuracy"], metrics[f"{bench}_majority_accuracy"]
    out = {"greedy": greedy, "majority": majority, "headroom": majority - greedy}
    if f"{bench}_vote_wins" in metrics and f"{bench}_n" in metrics:
        out["noise"] = headroom_noise(metrics[f"{bench}_vote_wins"], metrics[f"{bench}_greedy_wins"], metrics[f"{bench}_n"])
        out["within_noise"] = abs(out["headroom"]) <= out["noise"]
    return out


def headroom_line(headroom: dict) -> str:
    """One line on a base's headroom; it says so when the headroom is within noise of zero."""
    line = (f"base headroom {headroom['headroom']:+.3f} (majority vote {headroom['majority']:.3f}, greedy "
            f"{headroom['greedy']:.3f}"
            + (f", noise ±{headroom['noise']:.3f})" if "noise" in headroom else ")")
            + ": what majority-vote self-play can at most distill")
    if headroom.get("within_noise"):
        line += "; within noise of zero, so expect no gain from self-play on this base"
    return line


def gain_or_loss(final: float, base: float, n_items: int | None, spread: float = 0.0) -> tuple[str, float]:
    """("gain" | "loss" | "within noise", the noise) of ``final`` against ``base``."""
    margin = noise(base, n_items, spread)
    diff = final - base
    return ("within noise" if abs(diff) <= margin else "gain" if diff > 0 else "loss"), margin


def eval_items(summary: dict) -> int:
    """How many ShapesBench items a run's evaluations scored: ``eval.limit`` spread over the six kinds,
    all 1,200 when unset."""
    return (per_kind_of(summary["config"]["eval"]["limit"]) or PER_KIND) * len(world.KINDS)
