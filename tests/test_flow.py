"""The self-evolution flow on the smoke preset: a real Prefect flow, a real MLflow store, the real tiny model."""

import json
import shutil

import pytest
from mlflow.artifacts import download_artifacts
from mlflow.models import Model
from mlflow.tracking import MlflowClient

from flows.self_evolution import STAGES, self_evolution
from tasks import stages as stage_tasks
from tasks import stage_cache
from tasks.mlflow_client import EXPERIMENT
from visplay_core.config import load_config

pytestmark = pytest.mark.usefixtures("prefect_server")


def _metrics(summary):
    return [{k: v for k, v in it.items() if k != "stages"} for it in summary["iterations"]]


def _stage_runs(home):
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    exp = client.get_experiment_by_name(EXPERIMENT)
    return client, client.search_runs([exp.experiment_id], "tags.`visplay.stage` != ''", max_results=1000)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One complete smoke run: (home, config, summary)."""
    home = tmp_path_factory.mktemp("home")
    config = load_config("smoke")
    return home, config, self_evolution(config=config, home=str(home))


def test_all_stages_recorded_with_artifacts(finished):
    home, config, summary = finished
    assert [it["iteration"] for it in summary["iterations"]] == [1, 2, 3]
    assert all(not s["cached"] for it in summary["iterations"] for s in it["stages"].values())
    client, runs = _stage_runs(home)
    complete = [r for r in runs if r.data.tags.get("visplay.complete") == "true"]
    by_stage = {(r.data.tags["visplay.iteration"], r.data.tags["visplay.stage"]) for r in complete}
    assert by_stage >= {(str(k), s) for k in (1, 2, 3) for s in STAGES}
    assert ("0", "benchmark_eval") in by_stage  # the base model's evaluation
    for run in complete:
        names = {a.path for a in client.list_artifacts(run.info.run_id, "outputs")}
        assert "outputs/metrics.json" in names, run.data.tags["visplay.stage"]
    grpo = [r for r in complete if r.data.tags["visplay.stage"] == "reasoner_grpo"]
    assert all({a.path for a in client.list_artifacts(r.info.run_id, "outputs/model")} >=
               {"outputs/model/model.safetensors", "outputs/model/config.json"} for r in grpo)
    written = json.loads((home / "summary.json").read_text())
    assert written["run"] == summary["run"] and written["preset"] == "smoke"
    assert 0 <= written["base"]["shapes_accuracy"] <= 1
    for it in written["iterations"]:
        assert set(it["stages"]) == set(STAGES)
        assert {"shapes_accuracy", "pseudo_label_accuracy", "curated", "mean_confidence"} <= set(it)


def test_the_base_headroom_is_measured_first_and_logged(finished):
    from flows.self_evolution import summary_table

    home, config, summary = finished
    assert config.eval.votes == 4 and not config.eval.votes_every_iteration
    headroom = summary["base"]["headroom"]
    assert headroom["headroom"] == pytest.approx(headroom["majority"] - headroom["greedy"])
    assert headroom["greedy"] == summary["base"]["shapes_accuracy"] and headroom["noise"] >= 0
    assert 0 <= summary["base"]["glance_share"] <= 1 and 0 <= summary["base"]["sampled_glance_share"] <= 1
    for it in summary["iterations"]:  # later evaluations are greedy only, glance share included
        assert it["headroom"] is None and 0 <= it["glance_share"] <= 1 and it["sampled_glance_share"] is None
    assert "base headroom" in summary_table(summary) and "at most distill" in summary_table(summary)
    client, _ = _stage_runs(home)
    exp = client.get_experiment_by_name(EXPERIMENT).experiment_id
    [run] = client.search_runs([exp], "tags.`visplay.level` = 'run'")
    assert run.data.metrics["base.headroom"] == pytest.approx(headroom["headroom"])
    assert run.data.metrics["base.headroom_noise"] == pytest.approx(headroom["noise"])


def test_malformed_output_is_counted(finished):
    home, _, summary = finished
    for it in summary["iterations"]:
        for stage, file in (("confidence_scoring", "scored.jsonl"), ("candidate_generation", "candidates.jsonl")):
            folder = home / "stages" / f"{stage}-{it['stages'][stage]['key']}"
            rows = [json.loads(line) for line in (folder / file).read_text().splitlines()]
            metrics = json.loads((folder / "metrics.json").read_text())
            malformed = [r for r in rows if r["question"] is None]
            assert metrics["malformed_questions"] == len(malformed)
            assert all(r.get("reward", 0.0) == 0.0 for r in malformed)
            assert metrics["unanswered_samples"] == sum(r["m"] - sum(r["votes"].values())
                                                        for r in rows if r["question"] is not None)


def test_rerun_restores_every_stage(finished, monkeypatch):
    """With one MLflow query for the run's finished stages (``finished_stages``), none a stage."""
    home, config, summary = finished
    looked_up = []
    monkeypatch.setattr(stage_cache, "finished_stage", lambda *args: looked_up.append(args))
    again = self_evolution(config=config, home=str(home))
    assert all(s["cached"] for it in again["iterations"] for s in it["stages"].values())
    assert _metrics(again) == _metrics(summary)
    assert looked_up == []


def test_restore_from_mlflow_with_work_folder_deleted(finished):
    home, config, summary = finished
    shutil.rmtree(home / "stages")
    again = self_evolution(config=config, home=str(home))
    assert all(s["cached"] for it in again["iterations"] for s in it["stages"].values())
    assert _metrics(again) == _metrics(summary)
    assert (home / "stages").is_dir() and any((home / "stages").iterdir())


def test_the_registry_holds_the_last_reasoner_once_as_its_logged_model(finished):
    """On a plain SQLite store; the reruns above restored the same last Reasoner: no second version."""
    home, _, summary = finished
    client, _ = _stage_runs(home)
    last = summary["iterations"][-1]
    [version] = client.search_model_versions("name = 'visplay-reasoner'")
    model = client.get_logged_model(version.source.removeprefix("models:/"))
    assert model.name == "reasoner-iteration-3" and version.run_id == model.source_run_id
    assert model.tags["visplay.cache_key"] == last["stages"]["reasoner_grpo"]["key"]
    assert json.loads(model.tags["mlflow.modelVersions"]) == [{"name": "visplay-reasoner", "version": 1}]
    assert version.tags["shapes_accuracy"] == f"{last['shapes_accuracy']:.3f}"
    expected = {k: v for k, v in last.items() if k not in ("iteration", "stages") and v is not None}
    assert len(model.metrics) == len(expected)  # attached once, not again by the reruns
    assert {m.key: m.value for m in model.metrics} == pytest.approx(expected)
    where = client.get_model_version_download_uri("visplay-reasoner", version.version)
    mlmodel = Model.load(download_artifacts(f"{where}/MLmodel"))  # what the version's page reads
    assert mlmodel.metadata["checkpoint"] == model.tags["visplay.checkpoint"] == f"runs:/{model.source_run_id}/outputs/model"


def test_failure_in_iteration_2_resumes_from_that_stage(finished, tmp_path, monkeypatch):
    _, config, summary = finished
    real_curate = stage_tasks.curate
    calls = []

    def failing_curate(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # iteration 2's threshold_filtering
            raise RuntimeError("injected failure")
        return real_curate(*args, **kwargs)

    monkeypatch.setattr(stage_tasks, "curate", failing_curate)
    with pytest.raises(Exception, match="injected failure"):
        self_evolution(config=config, home=str(tmp_path))
    monkeypatch.setattr(stage_tasks, "curate", real_curate)
    resumed = self_evolution(config=config, home=str(tmp_path))
    cached = {(it["iteration"], name) for it in resumed["iterations"] for name, s in it["stages"].items() if s["cached"]}
    expected = {(1, s) for s in STAGES} | {(2, s) for s in STAGES[:STAGES.index("threshold_filtering")]}
    assert cached == expected
    assert _metrics(resumed) == _metrics(summary)
    client, runs = _stage_runs(tmp_path)
    failed = [r for r in runs if r.info.status == "FAILED"]
    assert [(r.data.tags["visplay.iteration"], r.data.tags["visplay.stage"]) for r in failed] == [("2", "threshold_filtering")]


def test_checkpoint_key_follows_content_not_place_or_sizes(tmp_path):
    def folder(name, weights):
        path = tmp_path / name
        path.mkdir()
        (path / "config.json").write_text('{"model_type": "qwen2_5_vl"}')
        (path / "model.safetensors").write_bytes(weights)
        return stage_tasks.Checkpoint.of_folder(path)

    first = folder("a", b"\x00" * 64)
    assert folder("b", b"\x00" * 64).key == first.key  # the same weights elsewhere: the same stages apply
    assert folder("c", b"\x00" * 63 + b"\x01").key != first.key  # retrained, same sizes: a new key
    with pytest.raises(FileNotFoundError, match="no config.json"):
        stage_tasks.Checkpoint.of_folder(tmp_path)


def test_flow_run_is_named_after_the_run(finished):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    _, _, summary = finished
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[summary["run"]])))
    assert any(r.state.is_completed() for r in runs)
