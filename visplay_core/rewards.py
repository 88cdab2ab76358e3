"""VisPlay's rewards and curation rule, as pure functions, plus thin adapters for TRL's GRPOTrainer.

Questioner: for each question, the Reasoner answers it m times; the majority answer is the pseudo-label
and its share of the m answers is the confidence c. The Questioner's reward is the uncertainty reward
of c minus lambda times a diversity penalty (the share of questions in the question's BLEU cluster),
then ReLU (paper). Unreadable questions get a fixed reward and are left out of the clustering.

Curation: questions whose confidence lies in [tau_low, tau_high] become the Reasoner's training set,
with their pseudo-labels. Reasoner: reward 1 when its boxed answer matches the pseudo-label (paper),
or 0.9 * accuracy + 0.1 * format (official code).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sacrebleu.metrics import BLEU
from scipy.cluster.hierarchy import fcluster, linkage

from .answers import answers_match, extract_answer, extract_question, normalize_answer
from .method import MethodConfig, UncertaintyForm

_BLEU = BLEU(effective_order=True)


@dataclass(frozen=True)
class Vote:
    """The outcome of a majority vote over m sampled answers.

    ``label`` is the winning normalized answer (``None`` if no sample answered), ``confidence`` its
    share of all m samples (unanswered ones included), ``votes`` the count of each normalized answer.
    """

    label: str | None
    confidence: float
    votes: dict[str, int]
    m: int


@dataclass(frozen=True)
class Candidate:
    """A generated question about an image, with the Reasoner's vote on it."""

    image_id: str
    question: str
    vote: Vote


def majority_vote(answers: Sequence[str | None]) -> Vote:
    """Majority vote over the normalized answers; ``None`` (or an answer normalizing to "") counts in
    m but never wins. Ties go to the answer that appeared first."""
    normalized = (normalize_answer(a) for a in answers if a is not None)
    votes = dict(Counter(a for a in normalized if a))  # Counter keeps first-appearance order
    if not votes:
        return Vote(label=None, confidence=0.0, votes={}, m=len(answers))
    label = max(votes, key=votes.__getitem__)  # max keeps the first of equal counts
    return Vote(label=label, confidence=votes[label] / len(answers), votes=votes, m=len(answers))


def uncertainty_reward(c: float, form: UncertaintyForm = "1-|2c-1|") -> float:
    """Reward for a question the Reasoner answers with confidence ``c``: highest at c = 0.5.

    "1-|2c-1|" (paper) peaks at 1; "min(c,1-c)" (official code) is half of it and peaks at 0.5.
    """
    if not 0 <= c <= 1:
        raise ValueError(f"confidence must lie in [0, 1], got {c}")
    return 1 - abs(2 * c - 1) if form == "1-|2c-1|" else min(c, 1 - c)


def _bleu_distance(a: str, b: str) -> float:
    """1 - BLEU/100, averaged over both directions and clipped to [0, 1]."""
    bleu = (_BLEU.sentence_score(a, [b]).score + _BLEU.sentence_score(b, [a]).score) / 2
    return min(max(1 - bleu / 100, 0.0), 1.0)


def diversity_penalties(questions: Sequence[str], distance_threshold: float = 0.5) -> list[float]:
    """Each question's share of ``questions`` that falls in its cluster.

    Questions are clustered by average-linkage agglomerative clustering on the BLEU distance, cut at
    ``distance_threshold``; a question unlike all others gets 1/len(questions), identical copies of
    one question all get 1.
    """
    n = len(questions)
    if n <= 1:
        return [1.0] * n
    condensed = np.array([_bleu_distance(questions[i], questions[j]) for i in range(n) for j in range(i + 1, n)])
    labels = fcluster(linkage(condensed, method="average"), t=distance_threshold, criterion="distance")
    sizes = Counter(labels)
    return [sizes[label] / n for label in labels]


def questioner_rewards(
    confidences: Sequence[float | None],
    questions: Sequence[str | None],
    method: MethodConfig,
    group_ids: Sequence[Hashable] | None = None,
) -> list[float]:
    """The Questioner's reward for each question: uncertainty - lambda * diversity penalty (ReLU'd if
    ``method.relu``); ``method.invalid_reward`` where the question is ``None`` (its confidence is
    ignored). Invalid questions take no part in the clustering.

    Clustering scope: with ``group_ids`` and ``method.diversity_scope == "group"`` (paper), questions
    are clustered within each group id (one image's questions); otherwise all valid questions given
    are clustered together, so pass one image's group to get per-image clustering, or a whole
    rollout batch for ``"batch"`` (official code).
    """
    if len(confidences) != len(questions):
        raise ValueError(f"{len(confidences)} confidences for {len(questions)} questions")
    per_group = group_ids is not None and method.diversity_scope == "group"
    keys = group_ids if per_group else [None] * len(questions)
    members: dict[Hashable, list[int]] = defaultdict(list)
    for i, (question, key) in enumerate(zip(questions, keys, strict=True)):
        if question is not None:
            members[key].append(i)
    rewards = [method.invalid_reward] * len(questions)
    for indices in members.values():
        penalties = diversity_penalties([questions[i] for i in indices], method.bleu_distance_threshold)
        for i, penalty in zip(indices, penalties):
            reward = uncertainty_reward(confidences[i], method.uncertainty) - method.diversity_weight * penalty
            rewards[i] = max(reward, 0.0) if method.relu else reward
    return rewards


def in_window(c: float, method: MethodConfig) -> bool:
    """Whether confidence ``c`` lies in the curation window [tau_low, tau_high], ends included."""
    return method.tau_low <= c <= method.tau_high


def curate(candidates: Iterable[Candidate], method: MethodConfig,
           kind_of: Callable[[str], Hashable] = lambda question: None) -> list[Candidate]:
    """The candidates that make the Reasoner's training set, in order: those with a pseudo-label and
    a confidence in the window, keeping the first of each (image, question) pair, where questions
    that differ only in case or whitespace count as the same; with ``method.max_label_share``, then
    capped so no pseudo-label holds more than that share of its question kind (``kind_of``)."""
    kept: dict[tuple[str, str], Candidate] = {}
    for candidate in candidates:
        if candidate.vote.label is None or not in_window(candidate.vote.confidence, method):
            continue
        key = (candidate.image_id, " ".join(candidate.question.lower().split()))
        kept.setdefault(key, candidate)
    curated = list(kept.values())
    if method.max_label_share is None:
        return curated
    return cap_label_share(curated, lambda c: c.vote.label, lambda c: kind_of(c.question), method.max_label_share)


def label_cap(counts: Sequence[int], max_share: float) -> int:
    """The largest t such that keeping min(count, t) rows of each label leaves no label above ``max_share``
    of the rows kept: t ≤ max_share × Σ min(count, t). 0 when no t > 0 can (e.g. a single label)."""
    for t in range(max(counts, default=0), 0, -1):
        if t <= max_share * sum(min(c, t) for c in counts) + 1e-9:
            return t
    return 0


def cap_label_share(rows: Sequence, label_of: Callable, kind_of: Callable, max_share: float) -> list:
    """``rows`` in order, keeping within each kind the first ``label_cap`` rows of each label."""
    by_kind: dict[Hashable, Counter] = defaultdict(Counter)
    for row in rows:
        by_kind[kind_of(row)][label_of(row)] += 1
    caps = {kind: label_cap(list(counts.values()), max_share) for kind, counts in by_kind.items()}
    taken: Counter = Counter()
    out = []
    for row in rows:
        key = (kind_of(row), label_of(row))
        if taken[key] < caps[key[0]]:
            taken[key] += 1
            out.append(row)
    return out


def reasoner_reward(completion: str, pseudo_label: str, method: MethodConfig) -> float:
    """(1 - w) * accuracy + w * format, w = ``method.reasoner_format_weight``: accuracy is whether the
    boxed answer matches the pseudo-label, format whether there is a boxed answer at all."""
    answer = extract_answer(completion)
    weight = method.reasoner_format_weight
    return (1 - weight) * answers_match(answer, pseudo_label) + weight * (answer is not None)


# TRL adapters: GRPOTrainer calls reward functions as f(prompts=, completions=, <dataset columns>=, ...)
# with one entry per completion, and logs each by its __name__.


def completion_text(completion: str | list[dict[str, Any]]) -> str:
    """The text of a TRL completion: a plain string, or the content of the last chat message."""
    return completion if isinstance(completion, str) else completion[-1]["content"]


def reasoner_accuracy_reward(prompts: list, completions: list, pseudo_label: list[str], **kwargs: Any) -> list[float]:
    """1.0 where the completion's boxed answer matches the row's ``pseudo_label`` column, else 0.0."""
    return [
        float(answers_match(extract_answer(completion_text(completion)), label))
        for completion, label in zip(completions, pseudo_label, strict=True)
    ]


def format_reward(prompts: list, completions: list, **kwargs: Any) -> list[float]:
    """1.0 where the completion has a boxed answer, else 0.0."""
    return [float(extract_answer(completion_text(completion)) is not None) for completion in completions]


def make_questioner_reward_func(
    score_confidence: Callable[[list[str | None], list[Any]], list[float | None]],
    method: MethodConfig,
) -> Callable[..., list[float]]:
    """A TRL reward function for the Questioner.

    It reads each completion's question (``None`` if invalid), asks ``score_confidence(questions,
    images)`` for the Reasoner's majority-vote confidence on each (``images`` is TRL's ``image``
    column when the rows have one, else the ``image_id`` column; the scorer may return ``None`` for
    ``None`` questions), and returns ``questioner_rewards`` grouped by ``image_id``.
    """

    def questioner_reward(
        prompts: list, completions: list, image_id: list[str], image: list[Any] | None = None, **kwargs: Any
    ) -> list[float]:
        questions = [extract_question(completion_text(completion)) for completion in completions]
        confidences = score_confidence(questions, image if image is not None else image_id)
        return questioner_rewards(confidences, questions, method, group_ids=image_id)

    return questioner_reward
