"""What the hidden ground truth says about an iteration (embedded world only; never used to train), and what
a run can tell without it.

For each set of questions (the pre-update rollout, the candidates, the curated set): how many are valid
questions of the grammar for their image, how often the majority-vote pseudo-label is the true answer,
and for candidates the calibration of pseudo-labels: true accuracy per confidence bin and per kind.

Label-free: how diverse a set of questions is (distinct questions and BLEU within an image's group, the mix
of kinds), the statistics of the Reasoner's answers to a fixed probe of unlabeled questions, and the
iteration a run keeps by one of them (``kept_iteration``).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from statistics import mean
from typing import TYPE_CHECKING

from . import world
from .bench import PER_KIND, per_kind_of
from .answers import answers_match

if TYPE_CHECKING:
    from .config import SelectionConfig
    from .method import BleuForm

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


def _questions_by_image(rows: list[dict]) -> dict[str, list[str]]:
    """Each image's questions, in order (an image whose questions are all malformed has none)."""
    groups: dict[str, list[str]] = {}
    for r in rows:
        groups.setdefault(r["image_id"], [])
        if r.get("question") is not None:
            groups[r["image_id"]].append(r["question"])
    return groups


def distinct_per_image(rows: list[dict]) -> float | None:
    """The mean number of distinct questions an image has (questions that differ only in case or whitespace
    count as one, as in curation); None without rows."""
    groups = _questions_by_image(rows)
    return mean(len({" ".join(q.lower().split()) for q in g}) for g in groups.values()) if groups else None


def pairwise_bleu(rows: list[dict], bleu: BleuForm = "sacrebleu") -> float | None:
    """The mean BLEU (0 to 1: 1 − ``rewards.bleu_distances``, the diversity penalty's measure) of the pairs of
    one image's questions, averaged over the images with two questions or more; None where none has."""
    from .rewards import bleu_distances

    groups = [g for g in _questions_by_image(rows).values() if len(g) > 1]
    return mean(1 - float(bleu_distances(g, bleu).mean()) for g in groups) if groups else None


def kind_shares(rows: list[dict]) -> dict[str, float]:
    """The share of each question kind (``world.KINDS``, and "invalid": outside the grammar) among the
    questions; empty without questions."""
    kinds = Counter(world.question_kind(r["question"]) or "invalid" for r in rows if r.get("question") is not None)
    total = kinds.total()
    return {k: kinds[k] / total for k in (*world.KINDS, "invalid")} if total else {}


def question_diversity(rows: list[dict], bleu: BleuForm = "sacrebleu", kinds: bool = True) -> dict:
    """Flat metrics of a question set's diversity: ``distinct_per_image``, ``pairwise_bleu`` and (with
    ``kinds``, the embedded world's grammar) ``kind_share.<kind>``."""
    return {"distinct_per_image": distinct_per_image(rows), "pairwise_bleu": pairwise_bleu(rows, bleu),
            **({f"kind_share.{k}": v for k, v in kind_shares(rows).items()} if kinds else {})}


def probe_statistics(rows: list[dict], previous: list[dict] | None = None) -> dict:
    """The label-free statistics of a Reasoner's answers to the probe. ``rows``, one a probe question:
    ``question``, ``greedy`` (its greedy answer), ``shuffled`` (its greedy answer with another image), ``label``
    and ``confidence`` (the majority of its sampled answers and that answer's share). Shares of the questions:

    - ``probe.vote_disagreement``: greedy answer other than the majority;
    - ``probe.shuffle_stability``: greedy answer the same with another image;
    - ``probe.agreement_previous``: majority the same as in ``previous`` (the previous evaluation's rows on the
      same questions; None without them, or when they are other questions);
    - ``probe.confidence``: the mean share of the majority.

    A missing answer matches nothing (``answers_match``). Empty without rows."""
    if not rows:
        return {}
    same = previous is not None and [p["question"] for p in previous] == [r["question"] for r in rows]
    return {
        "probe.questions": len(rows),
        "probe.vote_disagreement": mean(not answers_match(r["greedy"], r["label"]) for r in rows),
        "probe.shuffle_stability": mean(answers_match(r["greedy"], r["shuffled"]) for r in rows),
        "probe.agreement_previous": mean(answers_match(r["label"], p["label"]) for r, p in zip(rows, previous))
        if same else None,
        "probe.confidence": mean(r["confidence"] for r in rows),
    }


def probe_truth(rows: list[dict], scenes: dict[str, world.Scene]) -> dict:
    """Ground-truth measurement of the probe (embedded world only; never used to choose): the share of its
    questions valid for their image (``probe.oracle_validity``), and on the valid ones the true accuracy of the
    greedy answers (``probe.oracle_accuracy``) and of the majority (``probe.oracle_majority_accuracy``); a
    missing answer is wrong. Empty without scenes."""
    judged = _truth(rows, scenes)
    if not judged:
        return {}
    valid = [(r, t) for r, t in judged if t is not None]
    return {"probe.oracle_validity": len(valid) / len(judged),
            "probe.oracle_accuracy": mean(answers_match(r["greedy"], t) for r, t in valid) if valid else None,
            "probe.oracle_majority_accuracy": mean(answers_match(r["label"], t) for r, t in valid) if valid else None}


def kept_iteration(rows: list[dict], selection: SelectionConfig) -> int:
    """The iteration whose Reasoner a run keeps, by the label-free ``selection``: among the summary ``rows`` of
    iterations 1..K (a row of iteration 0, the base, is never kept: it is no self-played model), the earliest
    whose ``selection.statistic`` lies within ``selection.tolerance`` of the best (the ``selection.best`` end);
    the last iteration for the statistic "last", or where no row has the statistic."""
    played = [r for r in rows if r["iteration"] >= 1]
    if not played:
        raise ValueError("no iteration to keep: the rows hold none after the base")
    last = max(r["iteration"] for r in played)
    if selection.statistic == "last":
        return last
    sign = 1 if selection.best == "lowest" else -1
    scored = [(r["iteration"], sign * r[selection.statistic]) for r in played if r.get(selection.statistic) is not None]
    if not scored:
        return last
    best = min(value for _, value in scored)
    return min(k for k, value in scored if value <= best + selection.tolerance)


def selection_outcome(rows: list[dict], selection: SelectionConfig, n_items: int | None,
                      accuracy: str = "shapes_accuracy") -> dict:
    """How a run's kept iteration (``kept_iteration`` of its summary ``rows``) fares against the ground truth it
    never saw: its ``accuracy`` beside the best iteration's and the last's, and whether it is worse than the
    last, or below the best, by more than the noise of an evaluation of ``n_items`` (at the best's accuracy)."""
    played = {r["iteration"]: r[accuracy] for r in rows if r["iteration"] >= 1}
    kept, last = kept_iteration(rows, selection), max(played)
    best = max(played, key=lambda k: (played[k], -k))
    margin = noise(played[best], n_items)
    return {"kept": kept, "best": best, "last": last, "kept_accuracy": played[kept], "best_accuracy": played[best],
            "last_accuracy": played[last], "noise": margin,
            "worse_than_last": played[last] - played[kept] > margin,
            "near_best": played[best] - played[kept] <= margin}


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
