"""Evaluating a Reasoner on ShapesBench: greedy accuracy per kind, question-only and shuffled-image references,
and (with votes) the headroom a majority vote of sampled answers has over greedy decoding, and how often
greedy and sampled completions answer at a glance rather than reason (``world.GLANCE``). And its answers to a
run's probe of unlabeled questions, for the label-free statistics (``measure.probe_statistics``)."""

from __future__ import annotations

import random
from typing import Mapping

from PIL import Image

from . import bench, prompts, world
from .answers import answers_match, extract_answer
from .generation import generate
from .rewards import majority_vote


def answer_questions(model, processor, images, questions, batch_size: int = 64, max_new_tokens: int = 48):
    """Greedy completions to ``questions`` about ``images``."""
    completions = generate(model, processor, images, [prompts.reasoner_messages(q) for q in questions],
                           temperature=0.0, max_new_tokens=max_new_tokens, batch_size=batch_size)
    return [c[0] for c in completions]


def sample_answers(model, processor, images, questions, votes: int, temperature: float = 1.0,
                   batch_size: int = 64, max_new_tokens: int = 48, seed: int = 0):
    """``votes`` sampled completions per question, and each sample's mean token entropy."""
    return generate(model, processor, images, [prompts.reasoner_messages(q) for q in questions], n=votes,
                    temperature=temperature, max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed,
                    with_entropy=True)


def is_glance(completion: str) -> bool:
    """Whether a Reasoner's completion answers at a glance (opens with ``world.GLANCE``) rather than reasons."""
    return completion.lstrip().startswith(world.GLANCE)


def glance_shares(items, greedy: list[str], sampled: list[list[str]] | None) -> dict:
    """``glance_share`` (of greedy completions) and ``sampled_glance_share`` (of sampled ones), overall and
    per kind."""
    def shares(idx: list[int]) -> dict:
        row = {"glance_share": sum(is_glance(greedy[j]) for j in idx) / len(idx)}
        if sampled is not None:
            flat = [is_glance(c) for j in idx for c in sampled[j]]
            row["sampled_glance_share"] = sum(flat) / len(flat)
        return row

    return {**shares(list(range(len(items)))),
            "per_kind": {kind: shares([j for j, i in enumerate(items) if i.kind == kind])
                         for kind in sorted({i.kind for i in items})}}


def evaluate_on(name: str, model, processor, *, limit: int | None = None, votes: int = 0, temperature: float = 1.0,
                shapes_split: str = "test", shuffled: bool = True, source=None, judge=None) -> dict:
    """``model`` on benchmark ``name``: ShapesBench ("shapes", on its ``shapes_split`` draw, with ``shuffled`` images
    as a reference) or a real benchmark through its adapter (``benchmarks.evaluate_benchmark``: data from
    ``source``, open answers graded by ``judge``). Raises ``benchmarks.BenchmarkError`` for an unknown name."""
    check_benchmark(name)
    if name == "shapes":
        return evaluate_shapes(model, processor, limit=limit, shuffled=shuffled, votes=votes, temperature=temperature,
                               split=shapes_split)
    from .benchmarks import evaluate_benchmark

    return evaluate_benchmark(model, processor, name, source=source, limit=limit, judge=judge, votes=votes,
                              temperature=temperature)


def benchmark_names() -> list[str]:
    """What ``evaluate_on`` evaluates: ShapesBench, then every real benchmark's adapter."""
    from .benchmarks import ADAPTERS

    return ["shapes", *ADAPTERS]


def check_benchmark(name: str) -> None:
    """Raise ``benchmarks.BenchmarkError`` unless ``evaluate_on`` knows ``name`` (an adapter's name in any case,
    with or without dashes: "MMVet" is mm-vet)."""
    from .benchmarks import BenchmarkError, get_adapter

    try:
        name == "shapes" or get_adapter(name)
    except BenchmarkError:
        raise BenchmarkError(f"unknown benchmark {name!r} (known: {', '.join(benchmark_names())})") from None


def evaluate_shapes(model, processor, limit: int | None = None, shuffled: bool = True,
                    batch_size: int = 64, votes: int = 0, temperature: float = 1.0, split: str = "test") -> dict:
    """ShapesBench scores; ``limit`` caps the number of items (spread evenly over the kinds). With
    ``votes`` M > 0, also pass@1, majority-vote accuracy and mean token entropy of M samples at
    ``temperature`` (``bench.score``). ``split`` "validation" scores an independent draw, to choose
    settings on without touching the test items."""
    items = bench.limited(bench.shapes_bench(split=split), bench.per_kind_of(limit))
    images = [i.image() for i in items]
    questions = [i.question for i in items]
    sampled = entropies = None
    if votes:
        sampled, entropies = sample_answers(model, processor, images, questions, votes, temperature, batch_size)
    greedy = answer_questions(model, processor, images, questions, batch_size)
    result = bench.score(items, [extract_answer(c) for c in greedy], answers_match,
                         sampled and [[extract_answer(c) for c in per_item] for per_item in sampled], entropies)
    glances = glance_shares(items, greedy, sampled)
    for kind, row in glances.pop("per_kind").items():
        result["per_kind"][kind].update(row)
    result.update(glances)
    result["bench"] = bench.VERSION if split == "test" else f"{bench.VERSION}/{split}"
    if votes:
        result["temperature"] = temperature
    if shuffled:
        order = list(range(len(images)))
        random.Random(0).shuffle(order)
        swapped = answer_questions(model, processor, [images[j] for j in order], questions, batch_size)
        shuffled_scores = bench.score(items, [extract_answer(c) for c in swapped], answers_match)
        result["shuffled_image_accuracy"] = shuffled_scores["accuracy"]
        for kind, row in result["per_kind"].items():
            row["shuffled_image_accuracy"] = shuffled_scores["per_kind"][kind]["accuracy"]
    return result


def answer_probe(model, processor, images: Mapping[str, Image.Image], probe: list[dict], votes: int,
                 temperature: float = 1.0, batch_size: int = 64, seed: int = 0) -> list[dict]:
    """The Reasoner's answers to the probe's questions (rows ``{image_id, question}``): greedy; greedy with
    another image (``other_images``); and the majority of ``votes`` sampled answers at ``temperature``, with its
    share of them (``label``, ``confidence``, ``votes``). One row each, the rows of ``measure.probe_statistics``."""
    other = other_images([r["image_id"] for r in probe])
    questions = [r["question"] for r in probe]
    greedy = answer_questions(model, processor, [images[r["image_id"]] for r in probe], questions, batch_size)
    shuffled = answer_questions(model, processor, [images[other[r["image_id"]]] for r in probe], questions, batch_size)
    sampled, _ = sample_answers(model, processor, [images[r["image_id"]] for r in probe], questions, votes,
                                temperature, batch_size, seed=seed)
    rows = []
    for r, g, s, samples in zip(probe, greedy, shuffled, sampled):
        vote = majority_vote([extract_answer(c) for c in samples])
        rows.append({"image_id": r["image_id"], "question": r["question"], "greedy": extract_answer(g),
                     "shuffled": extract_answer(s), "label": vote.label, "confidence": vote.confidence,
                     "votes": vote.votes})
    return rows


def other_images(image_ids: list[str]) -> dict[str, str]:
    """For each image id, the one after it in the order the ids first appear (the last's is the first): another
    image wherever there are two or more."""
    order = list(dict.fromkeys(image_ids))
    return {i: order[(j + 1) % len(order)] for j, i in enumerate(order)}
