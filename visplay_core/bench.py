"""ShapesBench: a fixed, seeded held-out set of the shapes world, scored per question kind.

Besides the model's accuracy it reports two references that make "the model uses the image"
measurable: the question-only baseline (the best answer from the question text alone, estimated on an
independent sample of the same distribution) and the model's own accuracy on shuffled images.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from dataclasses import dataclass
from functools import lru_cache

from . import world

VERSION = "shapes-v2"
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


@lru_cache(maxsize=4)
def shapes_bench(per_kind: int = PER_KIND) -> tuple[Item, ...]:
    """The held-out set (version ``VERSION``)."""
    return tuple(sample_items(SEED, per_kind))


@lru_cache(maxsize=1)
def _question_only_table() -> tuple[dict, dict]:
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


def score(items, predictions: list[str | None], match) -> dict:
    """Accuracy overall and per kind, with the question-only baseline beside each."""
    per_kind: dict[str, dict] = {}
    for kind in sorted({i.kind for i in items}):
        idx = [j for j, i in enumerate(items) if i.kind == kind]
        per_kind[kind] = {
            "accuracy": sum(bool(match(predictions[j], items[j].answer)) for j in idx) / len(idx),
            "question_only_baseline": sum(question_only_answer(items[j].question, kind) == items[j].answer
                                          for j in idx) / len(idx),
            "n": len(idx),
        }
    n = len(items)
    return {
        "accuracy": sum(bool(match(p, i.answer)) for p, i in zip(predictions, items)) / n,
        "question_only_baseline": sum(question_only_answer(i.question, i.kind) == i.answer for i in items) / n,
        "n": n,
        "per_kind": per_kind,
    }


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
