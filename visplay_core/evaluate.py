"""Evaluating a Reasoner on ShapesBench: greedy accuracy per kind, question-only and shuffled-image references,
and (with votes) the headroom a majority vote of sampled answers has over greedy decoding."""

from __future__ import annotations

import random

from . import bench, prompts
from .answers import answers_match, extract_answer
from .generation import generate


def answer_questions(model, processor, images, questions, batch_size: int = 64, max_new_tokens: int = 48):
    """Greedy final answers (None where no answer was given) to ``questions`` about ``images``."""
    completions = generate(model, processor, images, [prompts.reasoner_messages(q) for q in questions],
                           temperature=0.0, max_new_tokens=max_new_tokens, batch_size=batch_size)
    return [extract_answer(c[0]) for c in completions]


def sample_answers(model, processor, images, questions, votes: int, temperature: float = 1.0,
                   batch_size: int = 64, max_new_tokens: int = 48, seed: int = 0):
    """``votes`` sampled final answers per question, and each sample's mean token entropy."""
    completions, entropies = generate(model, processor, images, [prompts.reasoner_messages(q) for q in questions],
                                      n=votes, temperature=temperature, max_new_tokens=max_new_tokens,
                                      batch_size=batch_size, seed=seed, with_entropy=True)
    return [[extract_answer(c) for c in per_item] for per_item in completions], entropies


def evaluate_shapes(model, processor, limit: int | None = None, shuffled: bool = True,
                    batch_size: int = 64, votes: int = 0, temperature: float = 1.0, split: str = "test") -> dict:
    """ShapesBench scores; ``limit`` caps the number of items (spread evenly over the kinds). With
    ``votes`` M > 0, also pass@1, majority-vote accuracy and mean token entropy of M samples at
    ``temperature`` (``bench.score``). ``split`` "validation" scores an independent draw, to choose
    settings on without touching the test items."""
    items = bench.limited(bench.shapes_bench(split=split), bench.per_kind_of(limit))
    images = [i.image() for i in items]
    questions = [i.question for i in items]
    samples = entropies = None
    if votes:
        samples, entropies = sample_answers(model, processor, images, questions, votes, temperature, batch_size)
    result = bench.score(items, answer_questions(model, processor, images, questions, batch_size), answers_match,
                         samples, entropies)
    result["bench"] = bench.VERSION if split == "test" else f"{bench.VERSION}/{split}"
    if votes:
        result["temperature"] = temperature
    if shuffled:
        order = list(range(len(images)))
        random.Random(0).shuffle(order)
        swapped = answer_questions(model, processor, [images[j] for j in order], questions, batch_size)
        shuffled_scores = bench.score(items, swapped, answers_match)
        result["shuffled_image_accuracy"] = shuffled_scores["accuracy"]
        for kind, row in result["per_kind"].items():
            row["shuffled_image_accuracy"] = shuffled_scores["per_kind"][kind]["accuracy"]
    return result
