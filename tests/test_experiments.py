"""Experiments: grid parsing and the comparison's arithmetic, the oracle Reasoner, and the shipped
experiments run for real on the smoke preset (one home, so later arms restore earlier arms' stages)."""

import json

import pytest
from mlflow.tracking import MlflowClient

from flows import experiments, grids
from flows.cli import main
from tasks.mlflow_client import EXPERIMENT
from tasks.registry import slug
from visplay_core import world
from visplay_core.bootstrap import world_texts
from visplay_core.config import ConfigError, load_config
from visplay_core.model import build_tiny_vlm, save_checkpoint
from visplay_core.selfplay import OracleScorer, pixel_key
from visplay_core.world import Obj, Scene

QUESTIONER_STAGES = ("question_rollout", "confidence_scoring", "questioner_grpo", "candidate_generation")


def test_grid_of_one_key_and_of_paired_keys():
    assert grids.parse_grid("seed=1,2") == [["seed=1"], ["seed=2"]]
    assert grids.parse_grid("a:b=1:2,3:4") == [["a=1", "b=2"], ["a=3", "b=4"]]
    for bad in ("seed", "seed=", "a:b=1:2,3"):
        with pytest.raises(ValueError):
            grids.parse_grid(bad)


def test_grids_multiply():
    arms = grids.arms_of(["a=1,2", "b=x,y,z"])
    assert len(arms) == 6
    assert arms[0] == ("a=1 b=x", ["a=1", "b=x"]) and arms[-1] == ("a=2 b=z", ["a=2", "b=z"])


def test_grid_of_arms_that_set_different_keys():
    assert grids.parse_grid("- | a=1 b=2 | c=3") == [[], ["a=1", "b=2"], ["c=3"]]
    assert grids.arms_of(["- | a=1", "s=1,2"]) == [("s=1", ["s=1"]), ("s=2", ["s=2"]),
                                                         ("a=1 s=1", ["a=1", "s=1"]), ("a=1 s=2", ["a=1", "s=2"])]
    for bad in ("a=1 | ", "a=1 | b", "a=1 | =2", "- | a="):
        with pytest.raises(ValueError, match="key=value overrides"):
            grids.parse_grid(bad)


def test_ablation_arms_each_change_only_their_setting():
    arms = dict(grids.arms_of(grids.shipped_grids("ablations", "study", [])))
    assert arms == {"config": [], "questioner.steps=0": ["questioner.steps=0"],
                    "question_source=grammar questioner.steps=0": ["question_source=grammar", "questioner.steps=0"],
                    "question_source=oracle-grammar questioner.steps=0": ["question_source=oracle-grammar",
                                                                          "questioner.steps=0"],
                    "method.diversity_weight=0": ["method.diversity_weight=0"]}
    study = load_config("study")
    for overrides in arms.values():  # each arm is a valid configuration, the study's but for its own keys
        changed = {k for k, v in load_config("study", overrides).model_dump().items() if study.model_dump()[k] != v}
        assert changed <= {o.split("=")[0].split(".")[0] for o in overrides}
    window = [dict(o.split("=") for o in overrides)
              for _, overrides in grids.arms_of(grids.shipped_grids("thresholds", "demo", []))]
    assert window[0] == {"method.tau_low": "0", "method.tau_high": "1"}  # no window: every candidate with a majority
    assert load_config("demo", [f"{k}={v}" for k, v in window[0].items()]).method.tau_high == 1


def test_iterations_experiment_keeps_the_total_grpo_budget():
    spec = grids.shipped_grids("iterations", "demo", [])
    arms = [dict(o.split("=") for o in overrides) for _, overrides in grids.arms_of(spec)]
    config = load_config("demo")
    for arm in arms:
        assert int(arm["iterations"]) * int(arm["questioner.steps"]) == config.iterations * config.questioner.steps
        assert int(arm["iterations"]) * int(arm["reasoner.steps"]) == config.iterations * config.reasoner.steps
    assert sorted(int(a["iterations"]) for a in arms) == [1, config.iterations]
    with pytest.raises(ValueError, match="unknown experiment"):
        grids.shipped_grids("nope", "demo", [])


def _summary(base, accuracies, cached=False, limit=300):
    stage = {"seconds": 1.0, "cached": cached}
    return {"run": "r", "base": {"shapes_accuracy": base}, "config": {"eval": {"limit": limit}},
            "iterations": [{"iteration": i + 1, "shapes_accuracy": a, "pseudo_label_accuracy": 0.5, "curated": 4,
                            "oracle_validity": 1.0, "stages": {"s": stage}} for i, a in enumerate(accuracies)]}


def test_comparison_means_spreads_and_verdicts():
    results = [{"arm": "A", "seed": 0, "summary": _summary(0.5, [0.55, 0.70])},
               {"arm": "A", "seed": 1, "summary": _summary(0.5, [0.55, 0.74], cached=True)},
               {"arm": "B", "seed": 0, "summary": _summary(0.5, [0.50, 0.52])},
               {"arm": "B", "seed": 1, "summary": _summary(0.5, [0.50, 0.50])}]
    out = experiments.compare(results)
    a, b = out["arms"]
    assert a["shapes_accuracy"]["mean"] == pytest.approx(0.72)
    assert a["shapes_accuracy"]["spread"] == pytest.approx(0.028284, abs=1e-6)  # stdev of 0.70, 0.74
    assert a["accuracy_by_iteration"] == pytest.approx([0.55, 0.72])
    assert (a["stages_cached"], a["stages"]) == (2, 4)
    # noise: 2 * sqrt(0.5 * 0.5 / 300) = 0.0577; A gains 0.22, B gains 0.01
    assert a["verdict"].startswith("above its base by 0.220")
    assert b["verdict"].startswith("within noise")
    assert out["base"]["mean"] == 0.5
    table = experiments.comparison_markdown("t", out)
    assert "| base (reference) |" in table and "| A | 2 |" in table and "0.720 ± 0.028" in table


def test_comparison_per_iteration_and_the_kept_iteration():
    def seed(accuracies, kept, bleu):
        summary = _summary(0.5, accuracies)
        for it, b in zip(summary["iterations"], bleu):
            it.update({"pairwise_bleu": b, "glance_share": 0.0, "distinct_per_image": 4.0,
                       "probe.vote_disagreement": 0.25, "probe.oracle_accuracy": 0.5})
        summary["base"]["probe"] = {"probe.confidence": 0.9}
        return {**summary, "kept_iteration": kept}

    out = experiments.compare([{"arm": "A", "seed": 0, "summary": seed([0.60, 0.70, 0.64], 2, [0.2, 0.3, 0.4])},
                               {"arm": "A", "seed": 1, "summary": seed([0.60, 0.66, 0.62], 3, [0.4, 0.5, 0.6])}])
    [a] = out["arms"]
    assert a["kept_iteration"] == [2, 3] and a["kept_accuracy"]["mean"] == pytest.approx((0.70 + 0.62) / 2)
    base, _, second, _ = a["by_iteration"]  # the base (iteration 0), then each iteration
    assert base["iteration"] == 0 and base["gain"]["mean"] == 0 and base["probe.confidence"]["mean"] == 0.9
    assert second["iteration"] == 2 and second["gain"]["mean"] == pytest.approx(0.18)
    assert second["pairwise_bleu"]["mean"] == pytest.approx(0.4)
    # noise: the spread of 0.70, 0.66 (0.028) is below two standard errors at 300 items: 2 * sqrt(0.25 / 300) = 0.0577
    assert second["noise"] == pytest.approx(0.057735, abs=1e-6) and a["noise"] == pytest.approx(0.057735, abs=1e-6)
    assert a["accuracy_by_iteration"] == pytest.approx([0.60, 0.68, 0.63])
    table = experiments.comparison_markdown("ablations", out)
    assert "| A | 2 | 0.500 ± 0.000 | 0.630 ± 0.014 | +0.130 ± 0.014 | ±0.058 |" in table
    assert "| 2, 3 | 0.660 ± 0.057 |" in table  # each seed's kept iteration, and their accuracy
    assert "| A | 2 | 0.680 ± 0.028 | +0.180 ± 0.028 | ±0.058 |" in table  # the per-iteration table's row of iteration 2
    assert "| vote_disagreement |" in table and "| probe acc. (truth) |" in table
    assert "| 0.400 ± 0.141 | 0.00 ± 0.00 | 0.250 ± 0.000 | - | - | - | 0.500 ± 0.000 |" in table


def test_arms_from_different_bases_are_judged_against_their_own():
    out = experiments.compare([{"arm": "weak", "seed": 0, "summary": _summary(0.3, [0.5])},
                               {"arm": "strong", "seed": 0, "summary": _summary(0.8, [0.78])}])
    assert out["base"] is None
    assert out["arms"][0]["verdict"].startswith("above its base by 0.200")
    assert out["arms"][1]["verdict"].startswith("within noise")  # 0.02 < 2 * sqrt(0.8 * 0.2 / 300) = 0.046


def test_headroom_comparison_pairs_each_base_headroom_with_its_gain():
    def with_headroom(summary, headroom):
        summary["base"]["headroom"] = {"headroom": headroom, "greedy": summary["base"]["shapes_accuracy"]}
        return summary

    out = experiments.compare([
        {"arm": "base_model=g0", "seed": 0, "summary": with_headroom(_summary(0.60, [0.61]), 0.00)},
        {"arm": "base_model=g0.35", "seed": 0, "summary": with_headroom(_summary(0.40, [0.48]), 0.12)},
        {"arm": "base_model=g0.35", "seed": 1, "summary": with_headroom(_summary(0.40, [0.52]), 0.12)}])
    flat, glance = out["arms"]
    assert flat["gain"]["mean"] == pytest.approx(0.01) and flat["base_headroom"]["mean"] == 0.0
    assert glance["gain"]["mean"] == pytest.approx(0.10) and glance["gain"]["spread"] == pytest.approx(0.028284, abs=1e-6)
    table = experiments.comparison_markdown("headroom", out)
    assert "| arm | seeds | base acc. | base headroom | ShapesBench acc. | gain |" in table
    assert "| base_model=g0.35 | 2 | 0.400 ± 0.000 | +0.120 ± 0.000 | 0.500 ± 0.028 | +0.100 ± 0.028 |" in table
    assert experiments.gain_plot(out)[:4] == b"\x89PNG"
    # without votes there is no headroom to show: the table keeps its usual columns
    plain = experiments.comparison_markdown("t", experiments.compare([{"arm": "A", "seed": 0, "summary": _summary(0.5, [0.5])}]))
    assert "| base headroom |" not in plain and "| ShapesBench acc. | gain | noise |" in plain


SCENE = Scene((Obj("circle", "red", "small", 1, 1), Obj("square", "blue", "large", 2, 3)), background=240)


def test_oracle_reasoner_answers_from_the_scene():
    image = world.render(SCENE, seed=1)
    exact = OracleScorer({"a": SCENE}, {"a": image}, m=5, error_rate=0.0, seed=0)
    right, invalid, none = exact.votes([image] * 3, ["What color is the circle?", "What color is the triangle?", None])
    assert (right.label, right.confidence) == ("red", 1.0)
    assert (invalid.label, invalid.confidence) == (None, 0.0)  # no triangle: not a valid question
    assert none is None
    always_wrong = OracleScorer({"a": SCENE}, {"a": image}, m=50, error_rate=1.0, seed=0)
    vote = always_wrong.votes([image], ["How many squares are there?"])[0]
    assert "1" not in vote.votes and set(vote.votes) <= {"0", "2", "3", "4"}
    noisy = OracleScorer({"a": SCENE}, {"a": image}, m=1000, error_rate=0.3, seed=0)
    assert noisy.confidences(["Is the red circle left of the blue square?"], [image])[0] == pytest.approx(0.7, abs=0.05)


def test_oracle_finds_the_scene_of_a_decoded_copy_of_the_image(tmp_path):
    from PIL import Image

    image = world.render(SCENE, seed=3)
    image.save(tmp_path / "x.png")
    assert pixel_key(Image.open(tmp_path / "x.png")) == pixel_key(image)
    assert pixel_key(world.render(SCENE, seed=4)) != pixel_key(image)


def test_oracle_needs_the_embedded_world(tmp_path):
    with pytest.raises(ConfigError, match="oracle_reasoner_error"):
        load_config("smoke", [f"corpus={tmp_path}", "oracle_reasoner_error=0.1"])


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("experiments")


def _table_arms(home, name):
    return [row["arm"] for row in json.loads((home / "experiments" / name / "results.json").read_text())["arms"]]


def _stages(home, run):
    summary = json.loads((home / "runs" / run / "summary.json").read_text())
    return summary["iterations"][0]["stages"]


@pytest.mark.usefixtures("prefect_server")
def test_threshold_sweep_reuses_every_questioner_stage(home, capsys):
    code = main(["sweep", "--config", "smoke", "--set", "iterations=1", "--home", str(home), "--name", "thresholds",
                 "--grid", "method.tau_low:method.tau_high=0.1:0.9,0.25:0.75,0.4:0.6"])
    assert code == 0
    arms = ["method.tau_low=0.1 method.tau_high=0.9", "method.tau_low=0.25 method.tau_high=0.75",
            "method.tau_low=0.4 method.tau_high=0.6"]
    assert _table_arms(home, "thresholds") == arms
    first, *later = [_stages(home, f"thresholds-{slug(a)}-s0") for a in arms]
    assert not any(s["cached"] for s in first.values())
    for stages in later:  # only curation and what follows it are recomputed
        assert all(stages[s]["cached"] for s in QUESTIONER_STAGES)
        assert not stages["threshold_filtering"]["cached"]
    table = (home / "experiments" / "thresholds" / "table.md").read_text()
    assert all(f"| {a} |" in table for a in arms) and "base (reference)" in table
    assert (home / "experiments" / "thresholds" / "accuracy.png").read_bytes()[:4] == b"\x89PNG"
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    exp = client.get_experiment_by_name(EXPERIMENT).experiment_id
    [run] = client.search_runs([exp], "tags.`visplay.experiment` = 'thresholds'")
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"table.md", "results.json", "accuracy.png"}
    assert "| base (reference) |" in capsys.readouterr().out


@pytest.mark.usefixtures("prefect_server")
def test_oracle_experiment_studies_the_questioner_alone(home):
    assert main(["experiment", "oracle", "--config", "smoke", "--set", "iterations=1", "--home", str(home)]) == 0
    assert _table_arms(home, "oracle") == [f"oracle_reasoner_error={e}" for e in ("null", "0.0", "0.3")]
    model_arm = _stages(home, f"oracle-{slug('oracle_reasoner_error=null')}-s0")
    assert all(s["cached"] for s in model_arm.values())  # the same run as the sweep's middle arm
    exact = _stages(home, f"oracle-{slug('oracle_reasoner_error=0.0')}-s0")
    assert not exact["confidence_scoring"]["cached"]
    scored_file = home / "stages" / f"confidence_scoring-{exact['confidence_scoring']['key']}" / "scored.jsonl"
    scored = [json.loads(r) for r in scored_file.read_text().splitlines()]
    # an exact oracle is certain of every valid question and silent on the rest
    assert {r["confidence"] for r in scored if r["question"] is not None} <= {0.0, 1.0}


@pytest.mark.usefixtures("prefect_server")
def test_initialization_experiment_compares_bases(home, tmp_path):
    untrained = tmp_path / "untrained"
    model, processor = build_tiny_vlm(world_texts(200, 0), seed=0)
    save_checkpoint(model, processor, untrained)
    assert main(["experiment", "initialization", "--config", "smoke", "--set", "iterations=1", "--home", str(home),
                 "--bases", f"{untrained},base"]) == 0
    results = json.loads((home / "experiments" / "initialization" / "results.json").read_text())
    weak, shipped = results["arms"]
    assert weak["arm"] == f"base_model={untrained}" and shipped["arm"] == "base_model=base"
    assert weak["base_accuracy"]["mean"] < shipped["base_accuracy"]["mean"]
    assert results["base"] is None  # two different bases: each arm is judged against its own


@pytest.mark.usefixtures("prefect_server")
def test_headroom_experiment_sets_each_base_headroom_beside_its_gain(home, tmp_path):
    with pytest.raises(SystemExit, match="give the bases"):
        main(["experiment", "headroom", "--config", "smoke", "--home", str(home)])
    untrained = tmp_path / "untrained"
    model, processor = build_tiny_vlm(world_texts(200, 0), seed=0)
    save_checkpoint(model, processor, untrained)
    assert main(["experiment", "headroom", "--config", "smoke", "--set", "iterations=1", "--home", str(home),
                 "--bases", f"{untrained},base"]) == 0
    out = home / "experiments" / "headroom"
    results = json.loads((out / "results.json").read_text())
    for row in results["arms"]:  # smoke samples 4 votes on the base: its headroom is measured first
        summary = json.loads((home / "runs" / row["runs"][0] / "summary.json").read_text())
        assert row["base_headroom"]["mean"] == pytest.approx(summary["base"]["headroom"]["headroom"])
        assert row["gain"]["mean"] == pytest.approx(summary["iterations"][-1]["shapes_accuracy"]
                                                    - summary["base"]["shapes_accuracy"])
    assert "| base headroom |" in (out / "table.md").read_text()
    assert (out / "gain_vs_headroom.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.usefixtures("prefect_server")
def test_ceiling_experiment_trains_on_true_answers(home):
    assert main(["experiment", "ceiling", "--config", "smoke", "--set", "iterations=1", "--home", str(home)]) == 0
    assert _table_arms(home, "ceiling") == [f"ceiling={c}" for c in ("none", "curated", "fresh")]
    config = load_config("smoke")
    runs = {c: _stages(home, f"ceiling-ceiling-{c}-s0") for c in ("none", "curated", "fresh")}
    for c in ("curated", "fresh"):  # the questioner and curation are the pseudo-label run's own
        assert all(runs[c][s]["cached"] for s in (*QUESTIONER_STAGES, "threshold_filtering"))
        assert not runs[c]["reasoner_grpo"]["cached"]
    metrics = {c: json.loads((home / "stages" / f"reasoner_grpo-{runs[c]['reasoner_grpo']['key']}" /
                              "metrics.json").read_text()) for c in ("curated", "fresh")}
    assert metrics["fresh"]["trained_on"] == config.reasoner.steps * config.reasoner.prompts_per_step
    curated = [json.loads(r) for r in (home / "stages" / f"threshold_filtering-{runs['none']['threshold_filtering']['key']}"
                                       / "curated.jsonl").read_text().splitlines()]
    assert metrics["curated"]["trained_on"] <= len(curated)  # invalid questions are dropped, none added


def test_the_command_line_offers_the_shipped_experiments_and_benchmarks_by_their_registries(capsys, monkeypatch):
    from flows.cli import build_parser
    from visplay_core.benchmarks import ADAPTERS

    parser = build_parser()
    for name in grids.EXPERIMENTS:
        assert parser.parse_args(["experiment", name]).name == name
    with pytest.raises(SystemExit):
        parser.parse_args(["experiment", "not-an-experiment"])
    assert "ablations" in capsys.readouterr().err
    monkeypatch.setenv("COLUMNS", "1000")  # the help of an option on one line: names are not broken at their hyphens
    with pytest.raises(SystemExit):
        build_parser().parse_args(["eval", "--help"])
    bench = next(line for line in capsys.readouterr().out.splitlines() if line.lstrip().startswith("--bench"))
    assert all(name in bench for name in ADAPTERS) and len(ADAPTERS) == 7


def test_each_arm_is_judged_against_the_first_arm():
    # 1,200 items: noise 2 * sqrt(0.6 * 0.4 / 1200) = 0.0283 at the first arm's 0.60
    out = experiments.compare([{"arm": "full", "seed": 0, "summary": _summary(0.5, [0.60], limit=None)},
                               {"arm": "frozen", "seed": 0, "summary": _summary(0.5, [0.58], limit=None)},
                               {"arm": "none", "seed": 0, "summary": _summary(0.5, [0.52], limit=None)}])
    full, frozen, none = out["arms"]
    assert full["versus_first"] == "" and frozen["versus_first"] == "-0.020, within noise (±0.028)"
    assert none["versus_first"] == "-0.080, below (±0.028)"
    table = experiments.comparison_markdown("ablations", out)
    assert "| vs full |" in table and table.count("-0.080, below (±0.028) |") == 1
