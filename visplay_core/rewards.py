"""VisPlay's rewards and curation rule, as pure functions, plus thin adapters for TRL's GRPOTrainer.

Questioner: for each question, the Reasoner answers it m times; the majority answer is the pseudo-label
and its share of the m answers is the confidence c. The Questioner's reward is the uncertainty reward
of c minus lambda times a diversity penalty (the share of questions in the question's BLEU cluster),
then ReLU (paper). Unreadable questions get a fixed reward; they are left out of the clustering (paper
preset) or join it as empty questions and pay their penalty too (official code).

Curation: questions whose confidence lies in [tau_low, tau_high] become the Reasoner's training set,
with their pseudo-labels. Reasoner: reward 1 when its boxed answer matches the pseudo-label (paper),
or 0.9 * accuracy + 0.1 * format (official code).
"""

from __future__ import annotations

import functools
import math
from collections import Counter, defaultdict
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .answers import answers_match, extract_answer, extract_question, normalize_answer
from .method import UNANSWERABLE_VOTE_SHARE, BleuForm, MethodConfig, UncertaintyForm


UNANSWERABLE = "none"
"""The Reasoner's answer to a question that does not apply to the image (its object is absent, or not
unique). A question for which at least ``MethodConfig.unanswerable_vote_share`` of the m answers say
so is invalid: it earns the Questioner no uncertainty reward and is never curated. A label-free guard against
drifting to unanswerable questions (it reads only the Reasoner's own answers)."""


def is_unanswerable(vote: "Vote", unanswerable_vote_share: float = UNANSWERABLE_VOTE_SHARE) -> bool:
    """Whether the vote's majority says ``UNANSWERABLE`` or at least ``unanswerable_vote_share`` of its m
    answers do."""
    return vote.label == UNANSWERABLE or vote.votes.get(UNANSWERABLE, 0) >= unanswerable_vote_share * vote.m


def answerable_confidence(vote: "Vote | None", unanswerable_vote_share: float = UNANSWERABLE_VOTE_SHARE) -> float | None:
    """The vote's confidence, or None where there is no vote or it is unanswerable (``is_unanswerable``)."""
    if vote is None or is_unanswerable(vote, unanswerable_vote_share):
        return None
    return vote.confidence


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


def nltk_sentence_bleu(hypothesis: str, reference: str) -> float:
    """NLTK's ``sentence_bleu([reference.split()], hypothesis.split(),
    smoothing_function=SmoothingFunction().method1)`` (the official code's question similarity), in [0, 1].

    BLEU-4 with uniform weights and no effective order: an order whose clipped n-gram matches are 0 gets
    precision 0.1 / (its hypothesis n-gram count, at least 1), so a hypothesis shorter than n tokens
    scores 0.1 at order n; no unigram match at all (an empty hypothesis included) scores 0; brevity
    penalty exp(1 - r/c) when the hypothesis (c tokens) is not longer than the reference (r tokens).
    """
    hyp, ref = hypothesis.split(), reference.split()
    log_precisions = []
    for n in range(1, 5):
        hyp_ngrams = Counter(zip(*(hyp[i:] for i in range(n))))
        matches = sum((hyp_ngrams & Counter(zip(*(ref[i:] for i in range(n))))).values())
        total = max(1, sum(hyp_ngrams.values()))
        if n == 1 and matches == 0:
            return 0.0
        log_precisions.append(0.25 * math.log(matches / total if matches else 0.1 / total))
    brevity = 1.0 if len(hyp) > len(ref) else math.exp(1 - len(ref) / len(hyp))
    return brevity * math.exp(math.fsum(log_precisions))


@functools.cache
def _sacrebleu():
    """sacrebleu's sentence BLEU with effective order, imported when first scored: a run whose stages are all
    restored never needs it (nor scipy's clustering below)."""
    from sacrebleu.metrics import BLEU

    return BLEU(effective_order=True)


def _sacrebleu_distance(a: str, b: str) -> float:
    """1 - BLEU/100 with sacrebleu, averaged over both directions and clipped to [0, 1]."""
    metric = _sacrebleu()
    bleu = (metric.sentence_score(a, [b]).score + metric.sentence_score(b, [a]).score) / 2
    return min(max(1 - bleu / 100, 0.0), 1.0)


def bleu_distances(questions: Sequence[str], bleu: BleuForm = "sacrebleu") -> np.ndarray:
    """The condensed matrix (pairs i < j, row by row) of BLEU distances between ``questions``: with
    "nltk", 1 - ``nltk_sentence_bleu(questions[i], questions[j])`` (the earlier question is the
    hypothesis, and that one direction stands for the pair, as in the official code)."""
    pairs = [(questions[i], questions[j]) for i in range(len(questions)) for j in range(i + 1, len(questions))]
    if bleu == "nltk":
        return np.array([1 - nltk_sentence_bleu(a, b) for a, b in pairs])
    return np.array([_sacrebleu_distance(a, b) for a, b in pairs])


def diversity_penalties(
    questions: Sequence[str], distance_threshold: float = 0.5, bleu: BleuForm = "sacrebleu"
) -> list[float]:
    """Each question's share of ``questions`` that falls in its cluster.

    Questions are clustered by average-linkage agglomerative clustering on the BLEU distance, merging
    while clusters lie strictly closer than ``distance_threshold`` (sklearn's ``AgglomerativeClustering
    (distance_threshold=...)``, which the official code uses; it builds the same scipy linkage tree);
    a question unlike all others gets 1/len(questions), identical copies of one question all get 1
    (except with "nltk" BLEU for questions of one or two words, whose BLEU with themselves is below 0.5).
    """
    from scipy.cluster.hierarchy import fcluster, linkage

    n = len(questions)
    if n <= 1:
        return [1.0] * n
    tree = linkage(bleu_distances(questions, bleu), method="average")
    # fcluster merges at distances <= t: the largest float below the threshold makes it strictly below.
    labels = fcluster(tree, t=np.nextafter(distance_threshold, -np.inf), criterion="distance")
    sizes = Counter(labels)
    return [sizes[label] / n for label in labels]


def questioner_rewards(
    confidences: Sequence[float | None],
    questions: Sequence[str | None],
    method: MethodConfig,
    group_ids: Sequence[Hashable] | None = None,
) -> list[float]:
    """The Questioner's reward for each question: uncertainty - lambda * diversity penalty (ReLU'd if
    ``method.relu``). A readable question without a confidence (the Reasoner's majority found it
    ``UNANSWERABLE``) gets ``method.invalid_reward`` minus its penalty. Where the question is ``None``
    (unreadable) its confidence is ignored: it gets
    ``method.invalid_reward``, minus lambda times its penalty if ``method.cluster_invalid`` (it then
    joins the clustering as an empty question, a cluster of its own counted in the group's size);
    otherwise it takes no part in the clustering.

    Clustering scope: with ``group_ids`` and ``method.diversity_scope == "group"`` (paper), questions
    are clustered within each group id (one image's questions); otherwise all questions given are
    clustered together, so pass one image's group to get per-image clustering, or a whole rollout
    batch for ``"batch"`` (official code). Questions are clustered in the order given.
    """
    if len(confidences) != len(questions):
        raise ValueError(f"{len(confidences)} confidences for {len(questions)} questions")
    per_group = group_ids is not None and method.diversity_scope == "group"
    keys = group_ids if per_group else [None] * len(questions)
    members: dict[Hashable, list[int]] = defaultdict(list)
    for i, (question, key) in enumerate(zip(questions, keys, strict=True)):
        if question is not None or method.cluster_invalid:
            members[key].append(i)
    rewards = [method.invalid_reward] * len(questions)
    for indices in members.values():
        group = [questions[i] or "" for i in indices]
        penalties = diversity_penalties(group, method.bleu_distance_threshold, method.bleu)
        for i, penalty in zip(indices, penalties):
            if questions[i] is None or confidences[i] is None:
                base = method.invalid_reward
            else:
                base = uncertainty_reward(confidences[i], method.uncertainty)
            reward = base - method.diversity_weight * penalty
            rewards[i] = max(reward, 0.0) if method.relu else reward
    return rewards


def in_window(c: float, tau: tuple[float, float]) -> bool:
    """Whether confidence ``c`` lies in the curation window ``tau`` = [tau_low, tau_high], ends included."""
    return tau[0] <= c <= tau[1]


def curate(candidates: Iterable[Candidate], method: MethodConfig,
           kind_of: Callable[[str], Hashable] = lambda question: None) -> list[Candidate]:
    """The candidates that make the Reasoner's training set, in order: those with a pseudo-label, not
    unanswerable (``answerable_confidence``), and a confidence in the window, keeping the first of each (image, question) pair, where questions
    that differ only in case or whitespace count as the same; with ``method.max_label_share``, then
    capped so no pseudo-label holds more than that share of its question kind (``kind_of``)."""
    kept: dict[tuple[str, str], Candidate] = {}
    for candidate in candidates:
        answerable = answerable_confidence(candidate.vote, method.unanswerable_vote_share) is not None
        windowed = in_window(candidate.vote.confidence, (method.tau_low, method.tau_high))
        if candidate.vote.label is None or not answerable or not windowed:
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


def reasoner_reward_funcs(method: MethodConfig) -> tuple[list[Callable[..., list[float]]], list[float]]:
    """The Reasoner's GRPO reward as TRL's weighted reward functions: (1 - w) * accuracy + w * format,
    w = ``method.reasoner_format_weight``: accuracy is whether the boxed answer matches the pseudo-label,
    format whether there is a boxed answer at all."""
    w = method.reasoner_format_weight
    return [reasoner_accuracy_reward, format_reward], [1 - w, w]


def make_questioner_reward_func(
    score_confidence: Callable[[list[str | None], list[Any], int], list[float | None]],
    method: MethodConfig,
) -> Callable[..., list[float]]:
    """A TRL reward function for the Questioner.

    It reads each completion's question (``None`` if invalid), asks ``score_confidence(questions,
    images, step)`` for the Reasoner's majority-vote confidence on each (``images`` is TRL's ``image``
    column when the rows have one, else the ``image_id`` column; ``step`` numbers the draw: the trainer's
    global step times the number of processes plus this process's index (0 outside a trainer), which seeds
    the votes so that a resumed run draws what an uninterrupted one would, and two processes never draw
    alike; the scorer may return ``None`` for ``None`` questions), and returns ``questioner_rewards``
    grouped by ``image_id``.

    TRL calls reward functions on each process's own slice of the generation batch (with several
    processes, each holds ``per_device_train_batch_size * steps_per_generation`` completions). Each
    process scores its own slice's confidences, then the questions, confidences and image ids of all
    processes are gathered (accelerate's ``gather_object``, in process order), so the ``"batch"``
    scope clusters the whole generation batch (all prompts x G, as the official code does) and a
    group split across processes stays whole; each process returns its own slice's rewards. Under TRL it
    logs ``gathered_questions``, how many questions were rewarded together.
    """
    from accelerate import PartialState  # here, so the pure functions above load without torch
    from accelerate.utils import gather_object

    def questioner_reward(
        prompts: list, completions: list, image_id: list[str], image: list[Any] | None = None,
        trainer_state: Any = None, **kwargs: Any
    ) -> list[float]:
        questions = [extract_question(completion_text(completion)) for completion in completions]
        state = PartialState()
        step = trainer_state.global_step if trainer_state is not None else 0
        draw = step * state.num_processes + state.process_index  # the step itself in one process
        confidences = list(score_confidence(questions, image if image is not None else image_id, draw))
        slices = gather_object([(questions, confidences, list(image_id))])  # one (q, c, ids) per process
        whole = [sum((part[k] for part in slices), []) for k in range(3)]
        rewards = questioner_rewards(whole[1], whole[0], method, group_ids=whole[2])
        if "log_metric" in kwargs:  # TRL's hook for a reward function's own metrics
            kwargs["log_metric"]("gathered_questions", len(whole[0]))
        start = sum(len(part[0]) for part in slices[: state.process_index])
        return rewards[start : start + len(questions)]

    return questioner_reward
