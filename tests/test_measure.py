"""The hidden ground truth's view of an iteration: validity, true pseudo-label accuracy, calibration, per
kind; and the label-free measures: question diversity, the probe's statistics, the kept iteration; against
hand-computed values on one scene."""

import pytest

from visplay_core.config import SelectionConfig
from visplay_core.measure import (calibration, distinct_per_image, kept_iteration, kind_shares, label_accuracy,
                                  measure_iteration, pairwise_bleu, per_kind, probe_statistics, probe_truth,
                                  question_diversity, selection_outcome)
from visplay_core.world import Obj, Scene

# A small red circle at row 1, col 1 and a large blue square at row 2, col 3.
SCENES = {"a": Scene((Obj("circle", "red", "small", 1, 1), Obj("square", "blue", "large", 2, 3)), background=240)}


def row(question, label, confidence):
    return {"image_id": "a", "question": question, "pseudo_label": label, "confidence": confidence}


ROWS = [
    row("What color is the circle?", "red", 0.8),           # valid, right
    row("Is there a red square?", "yes", 0.5),              # valid, wrong (no)
    row("How many blue objects are there?", "1", 0.3),      # valid, right
    row("What color is the triangle?", "red", 0.55),        # grammatical, but no triangle: invalid
    row(None, None, None),                                  # malformed: not judged
]


def test_label_accuracy_counts_valid_questions_and_right_labels():
    assert label_accuracy(ROWS, SCENES) == {"oracle_validity": 0.75, "label_accuracy": 2 / 3, "n": 4}


def test_label_accuracy_is_none_when_nothing_can_be_judged():
    assert label_accuracy([], SCENES) == {"oracle_validity": None, "label_accuracy": None, "n": 0}
    invalid = [row("What color is the triangle?", "red", 0.5), row("Why is the sky blue?", "blue", 0.5)]
    assert label_accuracy(invalid, SCENES) == {"oracle_validity": 0.0, "label_accuracy": None, "n": 2}


def test_calibration_bins_confidence_and_counts_invalid_questions_as_wrong():
    assert calibration(ROWS, SCENES) == [
        {"low": 0.3, "high": 0.4, "n": 1, "accuracy": 1.0},
        {"low": 0.5, "high": 0.6, "n": 2, "accuracy": 0.0},
        {"low": 0.8, "high": 0.9, "n": 1, "accuracy": 1.0},
    ]


def test_per_kind_and_flat_metrics():
    kinds = per_kind([*ROWS, row("Why is the sky blue?", "blue", 0.5)], SCENES)
    assert kinds["attribute"] == {"n": 2, "oracle_validity": 0.5, "label_accuracy": 1.0}
    assert kinds["exists"]["label_accuracy"] == 0.0 and kinds["count"]["label_accuracy"] == 1.0
    assert kinds["invalid"] == {"n": 1, "oracle_validity": 0.0, "label_accuracy": None}
    metrics = measure_iteration({"candidates": ROWS, "curated": ROWS[:2]}, SCENES)
    assert metrics["curated.oracle_validity"] == 1.0 and metrics["pseudo_label_accuracy"] == 0.5
    assert metrics["candidates.kinds"] == {"attribute": 2, "exists": 1, "count": 1}
    assert measure_iteration({"curated": ROWS}, {}) == {}


def test_noise_is_the_larger_of_the_spread_and_two_binomial_standard_errors():
    from visplay_core.measure import gain_or_loss, noise

    assert noise(0.5, 1200) == pytest.approx(2 * (0.25 / 1200) ** 0.5)  # 0.0289
    assert noise(0.5, 1200, spread=0.05) == 0.05
    assert noise(0.5, None) == 0.0
    assert gain_or_loss(0.66, 0.62, 1200) == ("gain", pytest.approx(0.02802, abs=1e-5))
    assert gain_or_loss(0.60, 0.62, 1200)[0] == "within noise"
    assert gain_or_loss(0.55, 0.62, 1200, spread=0.03)[0] == "loss"


def test_eval_items_counts_the_items_a_limit_keeps():
    from visplay_core.measure import eval_items

    assert eval_items({"config": {"eval": {"limit": None}}}) == 1200
    assert eval_items({"config": {"eval": {"limit": 300}}}) == 300
    assert eval_items({"config": {"eval": {"limit": 25}}}) == 24  # 4 per kind


def test_the_summary_says_gain_or_loss_against_the_base():
    from flows.self_evolution import summary_table

    stage = {"seconds": 1.0, "cached": False}
    summary = {"run": "r", "preset": "demo", "seconds": 3.0, "config": {"eval": {"limit": 300}},
               "base": {"shapes_accuracy": 0.60},
               "iterations": [{"iteration": 1, "shapes_accuracy": 0.70, "pseudo_label_accuracy": 0.5, "curated": 4,
                               "mean_confidence": 0.5, "stages": {"s": stage}}]}
    assert "iteration 1 against the base: gain (+0.100; noise ±0.057" in summary_table(summary)
    summary["iterations"][0]["shapes_accuracy"] = 0.58
    assert "against the base: within noise (-0.020" in summary_table(summary)


# ---- label-free: question diversity, the probe, the kept iteration ----------------------------------------

def q(image_id, question):
    return {"image_id": image_id, "question": question}


SAME, OTHER = "What color is the circle?", "Is there a red square"  # no word in common: BLEU 0
DIVERSE = [q("a", SAME), q("a", " what color is  the circle?"), q("a", SAME), q("a", OTHER),
           q("b", SAME), q("b", None), q("c", None)]


def test_distinct_questions_per_image():
    # a: SAME in two spellings and OTHER -> 2; b: 1 (the malformed one is no question); c: none -> 0
    assert distinct_per_image(DIVERSE) == pytest.approx(1.0)
    assert distinct_per_image([]) is None


def test_pairwise_bleu_within_each_image_group():
    group = [q("a", SAME), q("a", SAME), q("a", OTHER)]  # pairs: identical 1, and twice 0
    assert pairwise_bleu(group) == pytest.approx(1 / 3)
    two = group + [q("b", SAME), q("b", SAME), q("c", OTHER)]  # b: 1; c has one question: no pair
    assert pairwise_bleu(two) == pytest.approx((1 / 3 + 1) / 2)
    assert pairwise_bleu(two, "nltk") == pytest.approx((1 / 3 + 1) / 2)
    assert pairwise_bleu([q("c", OTHER)]) is None


def test_kind_shares_of_the_questions():
    rows = [q("a", "How many circles are there?"), q("a", "Is there a red square?"), q("a", "Where is it?"),
            q("b", "How many red objects are there?"), q("b", None)]
    shares = kind_shares(rows)
    assert shares == {"attribute": 0, "exists": 0.25, "count": 0.5, "count2": 0, "compare": 0, "spatial": 0,
                      "invalid": 0.25}
    assert kind_shares([q("a", None)]) == {}
    flat = question_diversity(rows)
    assert flat["kind_share.count"] == 0.5 and flat["distinct_per_image"] == 2.0
    assert "kind_share.count" not in question_diversity(rows, kinds=False)


def probe(question, greedy, shuffled, label, confidence):
    return {"image_id": "a", "question": question, "greedy": greedy, "shuffled": shuffled, "label": label,
            "confidence": confidence}


PROBE = [probe("What color is the circle?", "red", "red", "red", 0.6),        # agrees; stable; truth red
         probe("Is there a red square?", "yes", "no", "no", 0.8),              # disagrees; changes; truth no
         probe("How many blue objects are there?", None, None, "1", 0.4),      # no answer: disagrees, changes
         probe("What color is the triangle?", "blue", "blue", "blue", 1.0)]    # invalid for the scene


def test_probe_statistics_by_hand():
    stats = probe_statistics(PROBE)
    assert stats == {"probe.questions": 4, "probe.vote_disagreement": 0.5, "probe.shuffle_stability": 0.5,
                     "probe.agreement_previous": None, "probe.confidence": pytest.approx(0.7)}
    previous = [{**r, "label": label} for r, label in zip(PROBE, ["red", "yes", "1", None])]
    assert probe_statistics(PROBE, previous)["probe.agreement_previous"] == 0.5  # red, 1 the same; None matches nothing
    assert probe_statistics(PROBE, previous[:3])["probe.agreement_previous"] is None  # not the same questions
    assert probe_statistics([]) == {}


def test_probe_truth_measures_greedy_and_majority_on_valid_questions():
    # valid: circle (red), red square (no), blue objects (1); greedy right on the first only, majority on all three
    assert probe_truth(PROBE, SCENES) == {"probe.oracle_validity": 0.75, "probe.oracle_accuracy": pytest.approx(1 / 3),
                                          "probe.oracle_majority_accuracy": 1.0}
    assert probe_truth(PROBE, {}) == {}


def rows_of(values, statistic="probe.shuffle_stability"):
    return [{"iteration": k, statistic: v} for k, v in enumerate(values)]


def test_kept_iteration_by_a_label_free_statistic():
    rows = rows_of([0.1, 0.5, 0.3, 0.32])  # iteration 0 (the base) is never kept, however low
    assert kept_iteration(rows, SelectionConfig()) == 3  # "last" by default
    lowest = SelectionConfig(statistic="probe.shuffle_stability")
    assert kept_iteration(rows, lowest) == 2
    assert kept_iteration(rows, lowest.model_copy(update={"best": "highest"})) == 1
    assert kept_iteration(rows_of([0.1, 0.5, 0.32, 0.3]), lowest.model_copy(update={"tolerance": 0.05})) == 2  # earliest
    assert kept_iteration(rows_of([0.1, 0.5, None, 0.3]), lowest) == 3  # an iteration without it is passed over
    assert kept_iteration([{"iteration": 1}, {"iteration": 2}], lowest) == 2  # no row has it: the last
    with pytest.raises(ValueError, match="no iteration"):
        kept_iteration(rows_of([0.1]), lowest)


def test_a_kept_iteration_is_judged_against_the_best_and_the_last():
    rows = [{**row, "shapes_accuracy": acc} for row, acc in zip(rows_of([0.1, 0.5, 0.3, 0.32]), [0.48, 0.60, 0.64, 0.58])]
    lowest = SelectionConfig(statistic="probe.shuffle_stability")
    # 1,200 items: noise 2 * sqrt(0.64 * 0.36 / 1200) = 0.0277 at the best iteration's 0.64
    out = selection_outcome(rows, lowest, 1200)
    assert (out["kept"], out["best"], out["last"]) == (2, 2, 3) and out["noise"] == pytest.approx(0.027713, abs=1e-6)
    assert out["near_best"] and not out["worse_than_last"]
    last = selection_outcome(rows, SelectionConfig(), 1200)  # 0.58 is 0.06 below the best: beyond the noise
    assert last["kept"] == 3 and not last["near_best"] and not last["worse_than_last"]
    first = selection_outcome(rows, lowest.model_copy(update={"best": "highest"}), 1200)  # 0.60: 0.04 below the best
    assert first["kept"] == 1 and not first["near_best"] and not first["worse_than_last"]
    worse = [{**r, "shapes_accuracy": a} for r, a in zip(rows, [0.48, 0.50, 0.64, 0.62])]
    assert selection_outcome(worse, lowest.model_copy(update={"best": "highest"}), 1200)["worse_than_last"]
