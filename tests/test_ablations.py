"""The ablation arms' settings, and one arm run for real (smoke preset, shrunk; a real Prefect flow, MLflow store
and tiny model): the Questioner replaced by the world's grammar, the diversity of its questions and the probe's
label-free statistics logged every iteration, and the iteration the run keeps by one of them registered as
``<run>-kept``."""

import json

import pytest
from mlflow.tracking import MlflowClient

from flows.self_evolution import REGISTERED_REASONER, self_evolution, summary_table
from tasks.mlflow_client import EXPERIMENT
from visplay_core import world
from visplay_core.config import PROBE_STATISTICS, ConfigError, load_config
from visplay_core.measure import probe_statistics


def test_the_question_source_and_the_selection_are_checked(tmp_path):
    assert load_config("smoke").question_source == "questioner" and load_config("smoke").selection.statistic == "last"
    with pytest.raises(ConfigError, match="set questioner.steps=0"):  # an unused Questioner is not trained
        load_config("smoke", ["question_source=grammar"])
    with pytest.raises(ConfigError, match="needs the embedded corpus"):
        load_config("smoke", [f"corpus={tmp_path}", "question_source=oracle-grammar", "questioner.steps=0"])
    with pytest.raises(ConfigError, match="question_source"):
        load_config("smoke", ["question_source=scene", "questioner.steps=0"])
    with pytest.raises(ConfigError, match="set eval.probe above 0"):
        load_config("smoke", ["selection.statistic=probe.confidence", "eval.probe=0"])
    with pytest.raises(ConfigError, match="selection.statistic"):
        load_config("smoke", ["selection.statistic=shapes_accuracy"])  # only label-free statistics


def test_the_probe_asks_again_with_the_next_image():
    from visplay_core.evaluate import other_images

    assert other_images(["a", "b", "a", "c"]) == {"a": "b", "b": "c", "c": "a"}
    assert other_images(["a", "a"]) == {"a": "a"}  # one image: no other to show


@pytest.mark.usefixtures("prefect_server")

def _rows(home, stage, key, name):
    return [json.loads(line) for line in (home / "stages" / f"{stage}-{key}" / name).read_text().splitlines()]


def test_a_grammar_sourced_run_keeps_an_iteration_by_a_label_free_statistic(tmp_path):
    shrunk = ["iterations=2", "images_per_iteration=2", "group_size=2", "questioner.num_generations=2",
              "candidates_per_image=3", "method.m_questioner=2", "method.m_curation=3", "reasoner.steps=1",
              "reasoner.num_generations=2", "eval.limit=6", "eval.votes=0", "eval.probe=4"]
    config = load_config("smoke", [*shrunk, "question_source=grammar", "questioner.steps=0",
                                   "selection.statistic=probe.confidence", "selection.best=highest"])
    summary = self_evolution(config=config, home=str(tmp_path), run_name="no.questioner")
    evaluations = [summary["base"]["probe"]] + [{k: it[k] for k in PROBE_STATISTICS} for it in summary["iterations"]]
    probes = []
    for it in summary["iterations"]:
        candidates = _rows(tmp_path, "candidate_generation", it["stages"]["candidate_generation"]["key"],
                           "candidates.jsonl")
        # the grammar's questions, drawn blind: every one parses, some are not valid for their image
        assert len(candidates) == config.images_per_iteration * config.candidates_per_image
        assert all(r["completion"] is None and world.question_kind(r["question"]) for r in candidates)
        kinds = {k: v for k, v in it.items() if k.startswith("kind_share.")}
        assert 0 <= it["oracle_validity"] <= 1 and kinds["kind_share.invalid"] == 0
        assert len(kinds) == len(world.KINDS) + 1 and sum(kinds.values()) == pytest.approx(1)
        assert 1 <= it["distinct_per_image"] <= config.candidates_per_image and 0 <= it["pairwise_bleu"] <= 1
        probes.append(_rows(tmp_path, "benchmark_eval", it["stages"]["benchmark_eval"]["key"], "probe.jsonl"))
    # one probe for the run: each evaluation answers the same questions, and iteration 2 is compared with 1
    assert 0 < len(probes[0]) <= config.eval.probe
    assert [r["question"] for r in probes[0]] == [r["question"] for r in probes[1]]
    assert summary["iterations"][1]["probe.agreement_previous"] == probe_statistics(probes[1], probes[0])[
        "probe.agreement_previous"]
    assert "probe.agreement_previous" not in summary["base"]["probe"]  # the base's evaluation has none before it
    assert all(evaluation["probe.agreement_previous"] is not None for evaluation in evaluations[1:])
    # the kept iteration: the highest probe confidence, the earliest of equals
    confidence = [it["probe.confidence"] for it in summary["iterations"]]
    assert summary["kept_iteration"] == 1 + confidence.index(max(confidence))
    assert f"kept iteration {summary['kept_iteration']} (highest probe.confidence" in summary_table(summary)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name(EXPERIMENT).experiment_id
    [run] = client.search_runs([exp], "tags.`visplay.level` = 'run'")
    assert run.data.metrics["kept_iteration"] == summary["kept_iteration"]
    history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "probe.confidence")}
    assert history == pytest.approx({k: e["probe.confidence"] for k, e in enumerate(evaluations)})
    [evaluation] = client.search_runs([exp], "tags.`visplay.stage` = 'benchmark_eval' and tags.`visplay.iteration` = '1'")
    assert {"candidates.distinct_per_image", "candidates.pairwise_bleu", "candidates.kind_share.count",
            "curated.pairwise_bleu", *PROBE_STATISTICS, "probe.oracle_accuracy"} <= set(evaluation.data.metrics)
    kept = client.get_model_version_by_alias(REGISTERED_REASONER, "no-questioner-kept")
    row = summary["iterations"][summary["kept_iteration"] - 1]
    model = client.get_logged_model(kept.source.removeprefix("models:/"))
    assert model.tags["visplay.cache_key"] == row["stages"]["reasoner_grpo"]["key"]
    assert model.name == f"reasoner-iteration-{row['iteration']}" and kept.tags["visplay.iteration"] == str(row["iteration"])
