"""The hidden ground truth's view of an iteration: validity, true pseudo-label accuracy, calibration, per
kind; against hand-computed values on one scene."""

import pytest

from visplay_core.measure import calibration, label_accuracy, measure_iteration, per_kind
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
