"""The two roles at work: the Questioner writes questions about images, the Reasoner's sampled answers
give each question a majority-vote pseudo-label and a confidence. One confidence scorer serves the
Questioner's GRPO reward and the labelling of candidates before curation."""

from __future__ import annotations

import hashlib
import random
from typing import Mapping, Sequence

from PIL import Image

from . import bench, prompts, world
from .answers import extract_answer, extract_question
from .generation import make_engine
from .method import UNANSWERABLE_VOTE_SHARE
from .rewards import Vote, answerable_confidence, majority_vote


def write_questions(engine, images: Mapping[str, Image.Image], image_ids: Sequence[str], n: int,
                    temperature: float, max_new_tokens: int, seed: int) -> list[dict]:
    """``n`` sampled Questioner completions per image: rows ``{image_id, completion, question}``;
    ``question`` is None where the completion is not one question in the Questioner's format."""
    completions = engine.generate([images[i] for i in image_ids], [prompts.questioner_messages()] * len(image_ids),
                                  n=n, temperature=temperature, max_new_tokens=max_new_tokens, seed=seed)
    return [{"image_id": image_id, "completion": c, "question": extract_question(c)}
            for image_id, group in zip(image_ids, completions) for c in group]


def probe_questions(engine, images: Mapping[str, Image.Image], image_ids: Sequence[str], n: int,
                    temperature: float, max_new_tokens: int, seed: int) -> list[dict]:
    """A probe of unlabeled questions: the engine's model, as Questioner, writes one question about each image in
    turn until ``n`` are written; rows ``{image_id, question}`` of the well-formed ones."""
    ids = [image_ids[j % len(image_ids)] for j in range(n)]
    rows = write_questions(engine, images, ids, 1, temperature, max_new_tokens, seed)
    return [{"image_id": r["image_id"], "question": r["question"]} for r in rows if r["question"] is not None]


def grammar_questions(image_ids: Sequence[str], n: int, seed: int,
                      scenes: Mapping[str, world.Scene] | None = None) -> list[dict]:
    """``n`` questions per image from the world's grammar, as ``write_questions`` rows (no completion): drawn
    blind (``world.blind_question``: valid for the image or not), or with ``scenes`` from each image's own
    scene (``world.sample_question``: valid, the oracle arm; its answer is dropped, None where none was found)."""
    rng = random.Random(seed)
    rows = []
    for image_id in image_ids:
        for _ in range(n):
            if scenes is None:
                question = world.blind_question(rng)
            else:
                drawn = world.sample_question(scenes[image_id], rng)
                question = drawn[0] if drawn else None
            rows.append({"image_id": image_id, "completion": None, "question": question})
    return rows


class ConfidenceScorer:
    """The Reasoner's confidence in its own majority answer, from ``m`` sampled answers per question. The
    samples of a call are seeded by ``seed + step`` alone (a GRPO stage passes its trainer's step), so a
    stage resumed at step s draws the votes an uninterrupted one draws there."""

    def __init__(self, engine, m: int, temperature: float, max_new_tokens: int, seed: int,
                 unanswerable_vote_share: float = UNANSWERABLE_VOTE_SHARE):
        self.engine, self.m, self.temperature, self.max_new_tokens, self.seed = engine, m, temperature, max_new_tokens, seed
        self.unanswerable_vote_share = unanswerable_vote_share

    def votes(self, images: Sequence[Image.Image], questions: Sequence[str | None], step: int = 0) -> list[Vote | None]:
        """A vote per question (None for a None question); all samples of one question share a prefill."""
        valid = [i for i, q in enumerate(questions) if q is not None]
        completions = self.engine.generate(
            [images[i] for i in valid], [prompts.reasoner_messages(questions[i]) for i in valid], n=self.m,
            temperature=self.temperature, max_new_tokens=self.max_new_tokens, seed=self.seed + step)
        out: list[Vote | None] = [None] * len(questions)
        for i, samples in zip(valid, completions):
            out[i] = majority_vote([extract_answer(s) for s in samples])
        return out

    def confidences(self, questions: list[str | None], images: list[Image.Image], step: int = 0) -> list[float | None]:
        """The ``score_confidence`` hook of ``rewards.make_questioner_reward_func``."""
        return [answerable_confidence(v, self.unanswerable_vote_share) for v in self.votes(images, questions, step)]


def pixel_key(image: Image.Image) -> str:
    """A key of an image's pixels: the same picture after a round trip through a dataset has the same key."""
    rgb = image.convert("RGB")
    return hashlib.sha256(repr(rgb.size).encode() + rgb.tobytes()).hexdigest()


class OracleScorer(ConfidenceScorer):
    """The paper's sanity check: a Reasoner that answers from the scene (embedded world only). Each of its
    ``m`` samples is the true answer, or with probability ``error_rate`` another answer of the same kind;
    a question outside the grammar, or not valid for the scene, gets no answer. It stands in for the
    Reasoner wherever one votes, so the Questioner's learning can be studied alone."""

    def __init__(self, scenes: Mapping[str, world.Scene], images: Mapping[str, Image.Image], m: int,
                 error_rate: float, seed: int):
        self.scene_of = {pixel_key(images[i]): scenes[i] for i in images}
        self.m, self.error_rate, self.seed = m, error_rate, seed
        self.unanswerable_vote_share = UNANSWERABLE_VOTE_SHARE  # never reached: the oracle does not say "none"

    def votes(self, images: Sequence[Image.Image], questions: Sequence[str | None], step: int = 0) -> list[Vote | None]:
        rng = random.Random(self.seed + step)
        return [None if q is None else majority_vote(self._samples(self.scene_of[pixel_key(image)], q, rng))
                for image, q in zip(images, questions)]

    def _samples(self, scene: world.Scene, question: str, rng: random.Random) -> list[str | None]:
        truth = world.oracle(scene, question)
        if truth is None:
            return [None] * self.m
        others = [a for a in world.answer_space(truth) if a != truth]
        return [rng.choice(others) if rng.random() < self.error_rate else truth for _ in range(self.m)]


def make_scorer(spec, images_folder: str, images: Mapping[str, Image.Image]) -> ConfidenceScorer:
    """The scorer a ``grpo.ScorerSpec`` describes: the Reasoner model's, or the oracle's."""
    if spec.oracle_error is not None:
        from .corpus import Manifest, scenes_by_id

        scenes = scenes_by_id(spec.truth, Manifest.load(images_folder))
        return OracleScorer(scenes, images, spec.m, spec.oracle_error, spec.seed)
    engine = make_engine(spec.reasoner, spec.engine, spec.trust_remote_code, spec.seed)
    return ConfidenceScorer(engine, m=spec.m, temperature=spec.temperature, max_new_tokens=spec.max_new_tokens,
                            seed=spec.seed, unanswerable_vote_share=spec.unanswerable_vote_share)


def score_rows(scorer: ConfidenceScorer, images: Mapping[str, Image.Image], rows: list[dict]) -> list[dict]:
    """``rows`` (with ``image_id`` and ``question``) plus the Reasoner's vote on each question."""
    votes = scorer.votes([images[r["image_id"]] for r in rows], [r["question"] for r in rows])
    return [{**r, "pseudo_label": v.label if v else None, "confidence": v.confidence if v else None,
             "votes": v.votes if v else {}, "m": scorer.m} for r, v in zip(rows, votes)]


def oracle_labels(rows: list[dict], scenes: dict[str, world.Scene]) -> list[dict]:
    """``rows`` with the oracle's true answer as label; questions not valid for their image are dropped."""
    labelled = [{**r, "pseudo_label": world.oracle(scenes[r["image_id"]], r["question"])} for r in rows]
    return [r for r in labelled if r["pseudo_label"] is not None]


def fresh_questions(scenes: dict[str, world.Scene], image_ids: list[str], n: int, seed: int) -> list[dict]:
    """``n`` fresh world questions (answers balanced as ShapesBench's) on the iteration's images, with
    their true answers."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        image_id = rng.choice(image_ids)
        question, answer, _ = bench.training_question(scenes[image_id], rng)
        rows.append({"image_id": image_id, "question": question, "pseudo_label": answer})
    return rows
