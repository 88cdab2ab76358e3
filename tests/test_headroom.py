"""Headroom as a measurement: pass@1, majority-vote accuracy and token entropy of sampled answers, beside
greedy accuracy, on ShapesBench (pure arithmetic by hand, then the real tiny model and the command line)."""

import json
import math

import pytest
import torch

from visplay_core import bench
from visplay_core.answers import answers_match
from visplay_core.config import BASE_CHECKPOINT
from visplay_core.evaluate import evaluate_shapes
from visplay_core.generation import generate, mean_token_entropy
from visplay_core.model import load_model, load_processor


def test_sampled_scores_by_hand():
    samples = [["yes", "yes", "no"], ["2", None, "1"], ["red", "red", "red"]]
    answers = ["yes", "1", "blue"]
    out = bench.sampled_scores(samples, answers, answers_match, [[0.1, 0.2, 0.3], [0.4, 0.5, 0.6], [0.0, 0.0, 0.0]])
    assert out["pass_at_1"] == pytest.approx((2 / 3 + 1 / 3 + 0) / 3)
    # item 1: "yes" wins, right; item 2: "2" and "1" tie, the first seen ("2") wins, wrong; item 3: wrong.
    assert out["majority_accuracy"] == pytest.approx(1 / 3)
    assert out["mean_entropy"] == pytest.approx(2.1 / 9)
    assert out["votes"] == 3


def test_an_unanswered_majority_is_wrong():
    out = bench.sampled_scores([[None, None, "yes"]], ["yes"], answers_match)
    assert out["majority_accuracy"] == 1.0 and out["pass_at_1"] == pytest.approx(1 / 3)
    assert bench.sampled_scores([[None, None]], ["yes"], answers_match)["majority_accuracy"] == 0.0
    assert "mean_entropy" not in bench.sampled_scores([["yes"]], ["yes"], answers_match)


def test_score_reports_headroom_per_kind():
    items = [bench.Item(None, 0, "Is there a red circle?", "yes", "exists"),
             bench.Item(None, 0, "How many circles are there?", "2", "count")]
    result = bench.score(items, ["no", "2"], answers_match, samples=[["yes", "yes", "no"], ["1", "1", "2"]],
                         entropies=[[0.5] * 3, [1.0] * 3])
    assert result["accuracy"] == 0.5 and result["majority_accuracy"] == 0.5
    exists, count = result["per_kind"]["exists"], result["per_kind"]["count"]
    assert (exists["accuracy"], exists["majority_accuracy"], exists["pass_at_1"]) == (0.0, 1.0, pytest.approx(2 / 3))
    assert (count["accuracy"], count["majority_accuracy"], count["pass_at_1"]) == (1.0, 0.0, pytest.approx(1 / 3))
    assert exists["mean_entropy"] == 0.5 and count["mean_entropy"] == 1.0
    assert result["mean_entropy"] == pytest.approx(0.75)
    # exists: greedy "no" is wrong, the vote "yes" right; count: greedy "2" right, the vote "1" wrong.
    assert (exists["vote_wins"], exists["greedy_wins"], count["vote_wins"], count["greedy_wins"]) == (1.0, 0.0, 0.0, 1.0)
    assert (result["vote_wins"], result["greedy_wins"]) == (0.5, 0.5)


def test_vote_and_greedy_wins_by_hand():
    samples = [["yes", "yes", "no"], ["2", "2", "1"], ["red", "blue", "blue"], ["3", "3", "3"]]
    answers, greedy = ["yes", "1", "blue", "3"], ["no", "1", "blue", "3"]
    out = bench.sampled_scores(samples, answers, answers_match, greedy=greedy)
    # item 1: vote right, greedy wrong; item 2: greedy right, vote wrong; items 3 and 4: both right.
    assert (out["vote_wins"], out["greedy_wins"]) == (0.25, 0.25)
    assert out["vote_wins"] - out["greedy_wins"] == pytest.approx(out["majority_accuracy"] - 3 / 4)
    assert "vote_wins" not in bench.sampled_scores(samples, answers, answers_match)


def test_mean_token_entropy_by_hand():
    # Two sequences, three steps, vocabulary of 3 (token 0 is padding).
    scores = torch.tensor([
        [[0.0, 0.0, -1e9], [-1e9, 0.0, -1e9], [0.0, 0.0, 0.0]],   # uniform over 2, certain, uniform over 3
        [[-1e9, 0.0, -1e9], [0.0, 0.0, -1e9], [0.0, 0.0, 0.0]],   # certain, uniform over 2, then padding
    ])
    tokens = torch.tensor([[1, 2, 1], [2, 0, 0]])
    first, second = mean_token_entropy(scores, tokens, pad_token_id=0)
    assert first == pytest.approx((math.log(2) + 0 + math.log(3)) / 3, rel=1e-5)
    assert second == pytest.approx(0.0, abs=1e-6)  # only its first token counts, and it was certain
    scores[1, 0] = torch.tensor([0.0, 0.0, 0.0])
    assert mean_token_entropy(scores, tokens, 0)[1] == pytest.approx(math.log(3), rel=1e-5)


@pytest.fixture(scope="module")
def tiny():
    return load_model(BASE_CHECKPOINT), load_processor(BASE_CHECKPOINT)


def test_generation_reports_entropy_of_each_sample(tiny):
    model, processor = tiny
    items = bench.limited(bench.shapes_bench(), 1)[:3]
    messages = [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": i.question}]}] for i in items]
    texts, entropies = generate(model, processor, [i.image() for i in items], messages, n=4, temperature=1.0,
                                max_new_tokens=24, seed=0, with_entropy=True)
    assert [len(t) for t in texts] == [len(e) for e in entropies] == [4, 4, 4]
    assert all(e >= 0 for per_item in entropies for e in per_item)
    hot = generate(model, processor, [i.image() for i in items], messages, n=4, temperature=3.0, max_new_tokens=24,
                   seed=0, with_entropy=True)[1]
    assert sum(map(sum, hot)) > sum(map(sum, entropies))  # a hotter distribution has more entropy


def test_evaluate_shapes_with_votes_on_both_splits(tiny):
    model, processor = tiny
    result = evaluate_shapes(model, processor, limit=12, shuffled=False, votes=3, batch_size=24)
    assert result["n"] == 12 and result["votes"] == 3 and result["temperature"] == 1.0
    for row in [result, *result["per_kind"].values()]:
        assert {"accuracy", "pass_at_1", "majority_accuracy", "mean_entropy", "vote_wins", "greedy_wins"} <= row.keys()
        assert 0 <= row["pass_at_1"] <= 1 and 0 <= row["majority_accuracy"] <= 1 and row["mean_entropy"] >= 0
    validation = evaluate_shapes(model, processor, limit=12, shuffled=False, split="validation")
    assert validation["bench"] == f"{bench.VERSION}/validation" and "majority_accuracy" not in validation
    test_questions = {(i.question, i.image_seed) for i in bench.shapes_bench()}
    assert not test_questions & {(i.question, i.image_seed) for i in bench.shapes_bench(split="validation")}
    with pytest.raises(ValueError, match="unknown ShapesBench split"):
        bench.shapes_bench(split="train")


def test_eval_command_prints_headroom(capsys):
    from flows.cli import main

    assert main(["eval", "--model", "base", "--limit", "6", "--votes", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["votes"] == 2 and set(result["per_kind"]) == set(bench.BALANCED) | {"attribute"}
    assert main(["eval", "--model", "base", "--limit", "6", "--votes", "2"]) == 0
    table = capsys.readouterr().out
    assert "headroom" in table and "majority" in table and "2 votes at temperature 1.0" in table
    assert "glance" in table and "glance (sampled)" in table
    assert 0 <= result["glance_share"] <= 1 and 0 <= result["per_kind"]["count"]["sampled_glance_share"] <= 1


def test_real_benchmark_headroom_by_hand():
    from visplay_core.benchmarks import Item
    from visplay_core.benchmarks.scoring import sampled_score

    items = [Item("a", "Is it red?", [], "yes", "yesno"), Item("b", "How many?", [], "2016", "open")]
    samples = [["\\boxed{Yes}", "\\boxed{no}", "\\boxed{yes}"], ["\\boxed{2016}", "\\boxed{2000}", "\\boxed{2000}"]]
    out = sampled_score("realworldqa", items, samples, [[0.2] * 3, [0.4] * 3])
    assert out["pass_at_1"] == pytest.approx((2 / 3 + 1 / 3) / 2)
    assert out["majority_accuracy"] == pytest.approx(0.5)  # "yes" wins (right); "2000" wins (wrong)
    assert out["mean_entropy"] == pytest.approx(0.3) and out["votes"] == 3


def test_real_benchmark_with_votes_on_the_tiny_model(tiny):
    from pathlib import Path

    from visplay_core.benchmarks import evaluate_benchmark

    model, processor = tiny
    fixtures = Path(__file__).parent / "fixtures" / "benchmarks"
    result = evaluate_benchmark(model, processor, "hallusionbench", fixtures / "hallusionbench", limit=4,
                                max_new_tokens=8, batch_size=8, votes=2)
    assert result["votes"] == 2 and result["temperature"] == 1.0
    assert 0 <= result["pass_at_1"] <= 1 and 0 <= result["majority_accuracy"] <= 1 and result["mean_entropy"] > 0


def test_glance_shares_by_hand():
    from visplay_core.evaluate import glance_shares, is_glance

    assert is_glance("glance: \\boxed{3}") and is_glance("  glance: \\boxed{no}")
    assert not is_glance("rows: circles: none. \\boxed{0}") and not is_glance("\\boxed{glance:}")
    items = [bench.Item(kind=k, question="q", answer="1", image_seed=0, scene=None) for k in ("count", "count", "exists")]
    greedy = ["glance: \\boxed{1}", "rows: x. \\boxed{1}", "glance: \\boxed{yes}"]
    sampled = [["glance: \\boxed{1}", "rows: \\boxed{1}"], ["columns: \\boxed{2}", "rows: \\boxed{1}"],
               ["glance: \\boxed{no}", "glance: \\boxed{no}"]]
    shares = glance_shares(items, greedy, sampled)
    assert shares["glance_share"] == pytest.approx(2 / 3) and shares["sampled_glance_share"] == pytest.approx(3 / 6)
    assert shares["per_kind"]["count"] == {"glance_share": 0.5, "sampled_glance_share": 0.25}
    assert shares["per_kind"]["exists"] == {"glance_share": 1.0, "sampled_glance_share": 1.0}
    assert glance_shares(items, greedy, None)["per_kind"]["count"] == {"glance_share": 0.5}


def test_headroom_noise_by_hand():
    from visplay_core.measure import headroom_noise

    # 100 items, vote right where greedy is wrong on 20, the reverse on 10: per-item differences have mean
    # 0.1 and variance 0.3 - 0.01 = 0.29, so two standard errors are 2·sqrt(0.29 / 100).
    assert headroom_noise(0.2, 0.1, 100) == pytest.approx(2 * math.sqrt(0.0029))
    assert headroom_noise(0.0, 0.0, 1200) == 0.0  # the vote never changes an outcome: no noise at all


def test_base_headroom_and_its_line():
    from visplay_core.measure import base_headroom, headroom_line

    assert base_headroom({"shapes_accuracy": 0.6}) is None  # no votes sampled
    flat = base_headroom({"shapes_accuracy": 0.629, "shapes_majority_accuracy": 0.620, "shapes_vote_wins": 0.120,
                          "shapes_greedy_wins": 0.129, "shapes_n": 1200})
    assert flat["headroom"] == pytest.approx(-0.009) and flat["within_noise"]
    assert flat["noise"] == pytest.approx(2 * math.sqrt((0.249 - 0.009 ** 2) / 1200))
    line = headroom_line(flat)
    assert line.startswith("base headroom -0.009 (majority vote 0.620, greedy 0.629, noise ±0.029)")
    assert "at most distill" in line and "expect no gain" in line
    wide = base_headroom({"shapes_accuracy": 0.35, "shapes_majority_accuracy": 0.47, "shapes_vote_wins": 0.22,
                          "shapes_greedy_wins": 0.10, "shapes_n": 300})
    assert wide["headroom"] == pytest.approx(0.12) and not wide["within_noise"]
    assert "expect no gain" not in headroom_line(wide)
