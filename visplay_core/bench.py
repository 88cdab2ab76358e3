"""ShapesBench: a fixed, seeded held-out set of the shapes world, scored per question kind.

Besides the model's accuracy it reports two references that make "the model uses the image"
measurable: the question-only baseline (the best answer from the question text alone, estimated on an
independent sample of the same distribution) and the model's own accuracy on shuffled images.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections import Counter, defaultdict
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from . import world
from .io import write_json
from .rewards import majority_vote

VERSION = "shapes-v3"
SEED = 20251119
PER_KIND = 200
# Answers cycled through per kind, so no answer wins from the question text alone.
BALANCED = {"exists": ("yes", "no"), "compare": ("yes", "no"), "spatial": ("yes", "no"),
            "count": ("0", "1", "2"), "count2": ("0", "1", "2")}


@dataclass(frozen=True)
class Item:
    scene: world.Scene
    image_seed: int
    question: str
    answer: str
    kind: str

    def image(self):
        return world.render(self.scene, seed=self.image_seed)


def sample_items(seed: int, per_kind: int) -> list[Item]:
    """``per_kind`` valid questions of every kind on fresh scenes; answers balanced per ``BALANCED``."""
    rng = random.Random(seed)
    items = []
    for kind in world.KINDS:
        made = 0
        while made < per_kind:
            scene = world.random_scene(rng)
            cycle = BALANCED.get(kind)
            wanted = cycle[made % len(cycle)] if cycle else None
            drawn = world.sample_question(scene, rng, kind=kind, answer=wanted)
            if drawn is not None:
                items.append(Item(scene, rng.randrange(2**31), drawn[0], drawn[1], kind))
                made += 1
    return items


SPLITS = {"test": SEED, "validation": SEED + 2}  # SEED + 1 draws the question-only table


@lru_cache(maxsize=4)
def shapes_bench(per_kind: int = PER_KIND, split: str = "test") -> tuple[Item, ...]:
    """The held-out set (version ``VERSION``): ``test`` for claims, ``validation`` (an independent draw
    of the same distribution) to choose settings on."""
    if split not in SPLITS:
        raise ValueError(f"unknown ShapesBench split {split!r} (known: {', '.join(SPLITS)})")
    return tuple(sample_items(SPLITS[split], per_kind))


def training_question(scene: world.Scene, rng: random.Random, balanced: bool = True) -> tuple[str, str, str]:
    """A (question, answer, kind) to train on: a random kind and, with ``balanced``, an answer drawn
    uniformly from that kind's ``BALANCED`` answers (the world's own draw favours "yes", "1" and "no"),
    falling back to any answer, then to any kind, where the scene allows none."""
    kind = rng.choice(world.KINDS)
    wanted = rng.choice(BALANCED[kind]) if balanced and kind in BALANCED else None
    return (world.sample_question(scene, rng, kind=kind, answer=wanted)
            or world.sample_question(scene, rng, kind=kind) or world.sample_question(scene, rng))


def question_only_cache() -> Path:
    """Where the question-only table is kept, named by the code that draws it (this module and the world's):
    ``$XDG_CACHE_HOME/visplay`` (default ``~/.cache/visplay``). Drawing it takes about 10 s of pure Python, in
    every process that scores ShapesBench; read from here, milliseconds."""
    code = hashlib.sha256(Path(__file__).read_bytes() + Path(world.__file__).read_bytes()).hexdigest()[:16]
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "visplay" / f"question-only-{VERSION}-{code}.json"


@lru_cache(maxsize=1)
def _question_only_table() -> tuple[dict, dict]:
    """The question-only table, from ``question_only_cache()`` when a whole copy is there, else drawn and kept
    there (an unwritable cache only costs the draw)."""
    path = question_only_cache()
    try:
        kept = json.loads(path.read_text())
        return kept["by_question"], kept["by_kind"]
    except (OSError, ValueError, KeyError):
        pass
    table = draw_question_only_table()
    try:
        write_json(path, {"by_question": table[0], "by_kind": table[1]})
    except OSError:
        pass
    return table


def draw_question_only_table() -> tuple[dict, dict]:
    """The most common answer to each question text, and to each kind, on an independent sample of 5,000
    items a kind."""
    by_question, by_kind = defaultdict(Counter), defaultdict(Counter)
    for item in sample_items(SEED + 1, 5000):
        by_question[item.question][item.answer] += 1
        by_kind[item.kind][item.answer] += 1
    return ({q: c.most_common(1)[0][0] for q, c in by_question.items()},
            {k: c.most_common(1)[0][0] for k, c in by_kind.items()})


def question_only_answer(question: str, kind: str) -> str:
    """The most common answer to this exact question text (else to its kind) on an independent sample."""
    by_question, by_kind = _question_only_table()
    return by_question.get(question, by_kind[kind])


def score(items, predictions: list[str | None], match, samples: list[list[str | None]] | None = None,
          entropies: list[list[float]] | None = None) -> dict:
    """Accuracy overall and per kind, with the question-only baseline beside each.

    With ``samples`` (M sampled answers per item) and their ``entropies``, also ``pass_at_1`` (mean
    accuracy of single samples), ``majority_accuracy`` (accuracy of the majority vote of the M samples)
    and ``mean_entropy`` (mean token entropy of the samples): majority − greedy is the headroom that
    majority-vote self-play can at most distill; ``vote_wins`` − ``greedy_wins`` makes it up."""

    def rows(idx: list[int]) -> dict:
        row = {
            "accuracy": sum(bool(match(predictions[j], items[j].answer)) for j in idx) / len(idx),
            "question_only_baseline": sum(question_only_answer(items[j].question, items[j].kind) == items[j].answer
                                          for j in idx) / len(idx),
            "n": len(idx),
        }
        if samples is not None:
            row.update(sampled_scores([samples[j] for j in idx], [items[j].answer for j in idx], match,
                                      [entropies[j] for j in idx] if entropies is not None else None,
                                      greedy=[predictions[j] for j in idx]))
        return row

    result = rows(list(range(len(items))))
    result["per_kind"] = {kind: rows([j for j, i in enumerate(items) if i.kind == kind])
                          for kind in sorted({i.kind for i in items})}
    return result


def sampled_scores(samples: list[list[str | None]], answers: list[str], match,
                   entropies: list[list[float]] | None = None, greedy: list[str | None] | None = None) -> dict:
    """pass@1, majority-vote accuracy and (with ``entropies``) mean token entropy of M samples per question.
    An unanswered sample is wrong and never wins the vote (``rewards.majority_vote``).

    With the ``greedy`` answers, also where the two disagree in being right: ``vote_wins``, the share of
    questions the vote gets right and greedy decoding wrong, and ``greedy_wins``, the reverse. Their
    difference is the headroom; their sum says how often the vote changes the outcome at all (a base whose
    vote flips many answers but wins only half of the flips samples noise, not independent looks)."""
    pass_at_1 = sum(sum(bool(match(a, t)) for a in s) / len(s) for s, t in zip(samples, answers)) / len(answers)
    vote_right = [bool(match(majority_vote(s).label, t)) for s, t in zip(samples, answers)]
    out = {"pass_at_1": pass_at_1, "majority_accuracy": sum(vote_right) / len(answers),
           "votes": len(samples[0]) if samples else 0}
    if greedy is not None:
        greedy_right = [bool(match(g, t)) for g, t in zip(greedy, answers, strict=True)]
        out["vote_wins"] = sum(v and not g for v, g in zip(vote_right, greedy_right)) / len(answers)
        out["greedy_wins"] = sum(g and not v for v, g in zip(vote_right, greedy_right)) / len(answers)
    if entropies is not None:
        flat = [e for per_item in entropies for e in per_item]
        out["mean_entropy"] = sum(flat) / len(flat)
    return out


def per_kind_of(limit: int | None) -> int | None:
    """Items of each kind that an evaluation ``limit`` (spread evenly over the kinds) keeps; None: all."""
    return None if limit is None else max(1, limit // len(world.KINDS))


def limited(items, limit: int | None):
    """The first ``limit`` items of every kind (all when None), so a limit keeps every kind."""
    if limit is None:
        return list(items)
    counts: Counter = Counter()
    kept = []
    for item in items:
        if counts[item.kind] < limit:
            kept.append(item)
            counts[item.kind] += 1
    return kept
