"""The `official-code` preset computes the official VisPlay Questioner reward (bruno686/VisPlay,
train_examples/reward_function/cot_val.py), checked against an independent re-implementation written
here the way the official code is built: NLTK's sentence BLEU with smoothing method 1 on split tokens,
sklearn's AgglomerativeClustering on the precomputed 1 - BLEU matrix, penalty = cluster size / number of
questions, min(c, 1 - c) - penalty, and -1 - penalty for an unparsable question (clustered as "")."""

import math
import random
from collections import Counter
from fractions import Fraction

import numpy as np
import pytest
from accelerate import PartialState
from accelerate.launchers import debug_launcher
from sacrebleu.metrics import BLEU
from sklearn.cluster import AgglomerativeClustering

from visplay_core.answers import extract_question
from visplay_core.method import method_preset
from visplay_core.rewards import (
    bleu_distances,
    diversity_penalties,
    make_questioner_reward_func,
    nltk_sentence_bleu,
    questioner_rewards,
)

OFFICIAL = method_preset("official-code")
PAPER = method_preset("paper")


# --- the official algorithm, re-implemented independently ------------------------------------------


def _ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def _nltk_bleu(references: list[list[str]], hypothesis: list[str]) -> float:
    """nltk.translate.bleu_score.sentence_bleu(references, hypothesis, smoothing_function=
    SmoothingFunction().method1), following corpus_bleu / modified_precision step by step."""
    p_numerators, p_denominators = Counter(), Counter()
    for i in range(1, 5):  # modified_precision returns Fraction(numerator, denominator, _normalize=False)
        counts = Counter(_ngrams(hypothesis, i)) if len(hypothesis) >= i else Counter()
        max_counts: dict = {}
        for reference in references:
            reference_counts = Counter(_ngrams(reference, i)) if len(reference) >= i else Counter()
            for ngram in counts:
                max_counts[ngram] = max(max_counts.get(ngram, 0), reference_counts[ngram])
        clipped_counts = {ngram: min(count, max_counts[ngram]) for ngram, count in counts.items()}
        p_numerators[i] += sum(clipped_counts.values())
        p_denominators[i] += max(1, sum(counts.values()))
    hyp_len = len(hypothesis)
    ref_len = min((len(r) for r in references), key=lambda r: (abs(r - hyp_len), r))
    bp = 1 if hyp_len > ref_len else 0 if hyp_len == 0 else math.exp(1 - ref_len / hyp_len)
    if p_numerators[1] == 0:
        return 0
    epsilon = 0.1  # method1: add epsilon to the numerator of precisions with no match
    p_n = [
        (p_numerators[i] + epsilon) / p_denominators[i]
        if p_numerators[i] == 0
        else Fraction(p_numerators[i], p_denominators[i])
        for i in range(1, 5)
    ]
    return bp * math.exp(math.fsum(w_i * math.log(p_i) for w_i, p_i in zip((0.25, 0.25, 0.25, 0.25), p_n)))


def _bleu_distance_matrix(sentences: list[str]) -> np.ndarray:
    n = len(sentences)
    dist = np.zeros((n, n))
    for i in range(n):
        for j in range(i, n):
            score = 1.0 if i == j else _nltk_bleu([sentences[j].split()], sentences[i].split())
            dist[i, j] = dist[j, i] = 1 - score
    return dist


def _cluster_share_per_problem(problems: list[str], distance_threshold: float = 0.5) -> list[float]:
    clustering = AgglomerativeClustering(
        n_clusters=None, distance_threshold=distance_threshold, metric="precomputed", linkage="average"
    )
    labels = clustering.fit_predict(_bleu_distance_matrix(problems))
    sizes = Counter(labels)
    return [sizes[label] / len(problems) for label in labels]


def official_compute_score(completions: list[str], confidences: list[float]) -> list[float]:
    questions = [extract_question(c) or "" for c in completions]
    penalty = _cluster_share_per_problem(questions)
    return [(min(c, 1 - c) if q else -1) - p for q, c, p in zip(questions, confidences, penalty)]


# --- random rollout batches --------------------------------------------------------------------------

OBJECTS = ["dog", "dogs", "cat", "red car", "tree", "clock", "clocks", "man", "ball", "cup"]
PLACES = ["on the left", "in the image", "near the table", "behind the man", "in the picture"]
TEMPLATES = [
    "How many {o} are in the image?",
    "What color is the {o}?",
    "Is there a {o} {p}?",
    "Where is the {o} located?",
    "What is the {o} doing {p}?",
    "Which {o} is the largest?",
    "Is the {o} bigger than the {o2}?",
]
SHORT = ["{O}?", "Why?", "What {o}?", "Is it {o}?", "Where?", "How many {o}?"]
UNPARSABLE = ["no question here", "<question>Two?</question><question>x?</question>", "<question>no mark</question>",
              ""]


def _fresh(rng: random.Random) -> str:
    template = rng.choice(SHORT if rng.random() < 0.3 else TEMPLATES)
    o, o2 = rng.sample(OBJECTS, 2)
    return template.format(o=o, o2=o2, O=o.capitalize(), p=rng.choice(PLACES))


def _near_copy(rng: random.Random, question: str) -> str:
    words = question.split()
    edit = rng.randrange(5)
    if edit == 0:
        return question
    if edit == 1:
        return question[:-1] + " ?"
    if edit == 2 and len(words) > 2:
        words.pop(rng.randrange(len(words) - 1))
    elif edit == 3:
        words[rng.randrange(len(words))] = rng.choice(OBJECTS).split()[0]
    else:
        words.insert(rng.randrange(len(words)), rng.choice(["the", "big", "small", "red"]))
    text = " ".join(words)
    return text if text.endswith("?") else text + "?"


def random_batch(rng: random.Random) -> tuple[list[str], list[float]]:
    completions, questions = [], []
    for _ in range(rng.randint(2, 16)):
        roll = rng.random()
        if roll < 0.15:
            completions.append(rng.choice(UNPARSABLE))
            continue
        question = _near_copy(rng, rng.choice(questions)) if questions and roll < 0.55 else _fresh(rng)
        questions.append(question)
        completions.append(f"<think>look</think><question>{question}</question>")
    return completions, [rng.randint(0, 10) / 10 for _ in completions]


def test_official_preset_matches_the_official_algorithm_on_random_batches():
    rng = random.Random(14)
    differences, largest, with_clusters = 0, 0.0, 0
    for _ in range(300):
        completions, confidences = random_batch(rng)

        def score_confidence(questions, images, step, confidences=confidences):
            return [None if q is None else c for q, c in zip(questions, confidences)]

        image_ids = [f"img{i // 4}" for i in range(len(completions))]
        ours = make_questioner_reward_func(score_confidence, OFFICIAL)([None] * len(completions), completions,
                                                                        image_id=image_ids)
        theirs = official_compute_score(completions, confidences)
        gaps = [abs(a - b) for a, b in zip(ours, theirs, strict=True)]
        differences += max(gaps) > 1e-9
        largest = max(largest, *gaps)
        shares = _cluster_share_per_problem([extract_question(c) or "" for c in completions])
        with_clusters += max(shares) > 1 / len(shares)
    assert differences == 0, f"{differences} of 300 batches differ, by up to {largest}"
    assert with_clusters > 100  # the batches do put several questions in one cluster


def test_the_reference_bleu_is_nltks_on_its_documented_example():
    # nltk's SmoothingFunction docstring: sentence_bleu([reference1], hypothesis1, method1) = 0.4118...
    hypothesis = "It is a guide to action which ensures that the military always obeys the commands of the party"
    reference = "It is a guide to action that ensures that the military will forever heed Party commands"
    assert _nltk_bleu([reference.split()], hypothesis.split()) == pytest.approx(0.4118, abs=1e-4)
    assert nltk_sentence_bleu(hypothesis, reference) == _nltk_bleu([reference.split()], hypothesis.split())


# --- cause 1: NLTK's BLEU on whitespace tokens, one direction --------------------------------------


@pytest.mark.parametrize(
    ("hypothesis", "reference", "bleu"),
    [
        # "image?" is one token: 6/7 unigrams, 4/6 bigrams, 2/5 trigrams, 1/4 four-grams match
        ("How many clocks are in the image?", "How many dogs are in the image?", (6 / 7 * 4 / 6 * 2 / 5 / 4) ** 0.25),
        # shorter than 4 words: an order longer than the question has 0 of at least 1 n-gram, smoothed to 0.1
        ("Why?", "Why?", 0.1**0.75),
        ("What color?", "What color?", 0.1**0.5),
        ("Is it red?", "Is it blue?", (2 / 3 * 1 / 2 * 0.1 * 0.1) ** 0.25),
        # no bigram, trigram or four-gram match: 0.1 / 3, 0.1 / 2, 0.1 / 1
        ("a b c d", "a c b d", (1 * 0.1 / 3 * 0.1 / 2 * 0.1) ** 0.25),
        # clipped unigram counts; zero-match orders smoothed
        ("the the the the", "the cat", (1 / 4 * 0.1 / 3 * 0.1 / 2 * 0.1) ** 0.25),
        # brevity penalty when the hypothesis is shorter, none when longer
        ("a b c d", "a b c d e f", math.exp(1 - 6 / 4)),
        ("a b c d e f", "a b c d", (4 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25),
        # no unigram match at all, or an empty side: 0
        ("a b", "c d", 0.0),
        ("", "a b", 0.0),
        ("a b", "", 0.0),
        ("", "", 0.0),
    ],
)
def test_nltk_sentence_bleu_by_hand(hypothesis, reference, bleu):
    assert nltk_sentence_bleu(hypothesis, reference) == pytest.approx(bleu, rel=1e-12, abs=0)


def test_sacrebleu_cannot_stand_in_for_nltk_method1():
    # Floor smoothing skips orders the hypothesis has no n-gram of: a question under 4 words scores 0.
    floor = BLEU(tokenize="none", smooth_method="floor", smooth_value=0.1, effective_order=False)
    assert floor.sentence_score("Is it red?", ["Is it blue?"]).score == 0.0
    assert nltk_sentence_bleu("Is it red?", "Is it blue?") == pytest.approx((1 / 300) ** 0.25)


def test_bleu_distances_take_the_earlier_question_as_hypothesis():
    assert bleu_distances(["a b c d", "a b c d e f"], "nltk") == pytest.approx([1 - math.exp(-0.5)])
    assert bleu_distances(["a b c d e f", "a b c d"], "nltk") == pytest.approx([1 - (1 / 15) ** 0.25])


def test_whitespace_tokens_keep_questions_that_differ_by_one_word_apart():
    questions = ["How many clocks are in the image?", "How many dogs are in the image?"]
    assert diversity_penalties(questions, bleu="nltk") == [0.5, 0.5]  # distance 0.511
    assert diversity_penalties(questions, bleu="sacrebleu") == [1.0, 1.0]  # "?" split off: distance 0.405


def test_identical_one_or_two_word_questions_stay_apart_in_the_official_code():
    assert diversity_penalties(["Why?", "Why?"], bleu="nltk") == [0.5, 0.5]  # BLEU 0.18 with itself
    assert diversity_penalties(["Is it red?", "Is it red?"], bleu="nltk") == [1.0, 1.0]  # 0.1 ** 0.25 = 0.56
    assert diversity_penalties(["Why?", "Why?"], bleu="sacrebleu") == [1.0, 1.0]


# --- cause 2: clusters merge strictly below the threshold -------------------------------------------


def test_clusters_merge_strictly_below_the_threshold_as_in_sklearn():
    questions = ["What color is the car?", "What color is the car ?"]
    (distance,) = bleu_distances(questions, "nltk")
    assert diversity_penalties(questions, distance, "nltk") == [0.5, 0.5]
    assert diversity_penalties(questions, np.nextafter(distance, 1), "nltk") == [1.0, 1.0]
    assert _cluster_share_per_problem(questions, distance) == [0.5, 0.5]
    assert _cluster_share_per_problem(questions, np.nextafter(distance, 1)) == [1.0, 1.0]


def test_equal_distances_merge_the_earlier_pair_first_as_in_sklearn():
    # d(A, B) = d(B, C) = 1 - (1/15) ** 0.25 = 0.492 (same n-gram counts), d(A, C) = 0.91: whichever pair
    # merges first keeps the third question out (mean distance 0.70). Both merge the first pair in order.
    a, b, c = "k l m n x y", "k l m n o p", "q r m n o p"
    assert bleu_distances([a, b, c], "nltk") == pytest.approx([1 - (1 / 15) ** 0.25, 0.913666, 1 - (1 / 15) ** 0.25])
    for questions in ([a, b, c], [c, b, a]):
        assert diversity_penalties(questions, bleu="nltk") == [2 / 3, 2 / 3, 1 / 3]
        assert _cluster_share_per_problem(questions) == [2 / 3, 2 / 3, 1 / 3]


# --- cause 3: unparsable questions are clustered as "" ---------------------------------------------


def test_unparsable_questions_are_singletons_in_the_denominator():
    questions = ["What color is the car?", None, "What color is the car ?", None]
    confidences = [0.5, None, 0.7, None]
    # the two near-copies: one cluster of 2 in 4; each "" alone: 1 in 4
    assert questioner_rewards(confidences, questions, OFFICIAL) == pytest.approx(
        [0.5 - 2 / 4, -1 - 1 / 4, 0.3 - 2 / 4, -1 - 1 / 4]
    )
    # the paper preset leaves them out: the near-copies are a cluster of 2 in 2, ReLU'd to 0
    assert questioner_rewards(confidences, questions, PAPER) == [0.0, 0.0, 0.0, 0.0]


# --- scope: the whole generation batch across processes --------------------------------------------

RANK_QUESTIONS = [
    ["What color is the car?", "How many dogs are in the image?", None],
    ["What color is the car?", "What color is the car?", "Which animal is the largest?"],
]


def _reward_on_one_rank(method_name: str) -> None:
    PartialState._reset_state()
    rank = PartialState(cpu=True).process_index  # as TrainingArguments(use_cpu=True) sets it up
    method = method_preset(method_name)
    questions = RANK_QUESTIONS[rank]
    completions = ["garbage" if q is None else f"<question>{q}</question>" for q in questions]
    image_ids = [f"img{rank}"] * 3
    reward_func = make_questioner_reward_func(lambda qs, images, step: [None if q is None else 0.5 for q in qs], method)
    rewards = reward_func([None] * 3, completions, image_id=image_ids)
    whole = RANK_QUESTIONS[0] + RANK_QUESTIONS[1]
    expected = questioner_rewards([None if q is None else 0.5 for q in whole], whole, method,
                                  group_ids=["img0"] * 3 + ["img1"] * 3)[3 * rank : 3 * rank + 3]
    assert rewards == expected, (rank, rewards, expected)
    if method.diversity_scope == "batch":  # 3 copies of the first question in 6, not 1 in 3 or 2 in 3
        assert rewards[0] == pytest.approx(0.5 - 3 / 6)


@pytest.mark.parametrize("method_name", ["official-code", "paper"])
def test_questioner_reward_clusters_the_whole_batch_across_processes(method_name):
    debug_launcher(_reward_on_one_rank, args=(method_name,), num_processes=2)
