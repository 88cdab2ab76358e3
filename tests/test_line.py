"""A line of evolution advanced as the nightly deployment does, with real Prefect (the suite's server), a real
MLflow server (started here, SQLite behind it, its registry) and the real tiny model on the smoke preset."""

import json
import os
import re
import urllib.request
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from flows import cli
from flows.deploy import schedule_plan, visplay_nightly
from flows.line import LineError, check_line_name, limit_name, read_line
from flows.self_evolution import STAGES, self_evolution
from tasks import stages as stage_tasks
from tasks.locks import RunInProgressError
from tasks.mlflow_client import EXPERIMENT, experiment_id, tracking_client, tracking_uri
from visplay_core.config import load_config, preset_names
from tests.net import mlflow_server as start_mlflow

pytestmark = pytest.mark.usefixtures("prefect_server")
OVERRIDES = ["eval.limit=12"]
LINE = "night"



@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real MLflow server (SQLite behind it); MLFLOW_TRACKING_URI points at it."""
    with start_mlflow(tmp_path_factory.mktemp("mlflow")) as url:
        os.environ["MLFLOW_TRACKING_URI"] = url
        yield url
        del os.environ["MLFLOW_TRACKING_URI"]


def _keys(summary):
    """Each iteration's stages by cache key: the same keys are the same models and data."""
    return [{name: s["key"] for name, s in it["stages"].items()} for it in summary["iterations"]]


def _runs(client, query):
    exp = client.get_experiment_by_name(EXPERIMENT).experiment_id
    return client.search_runs([exp], query, max_results=1000)


def _flow_runs(**name_filter):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    with get_client(sync_client=True) as client:
        return client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(**name_filter)))


@pytest.fixture(scope="module")
def line(mlflow_server, tmp_path_factory):
    """Two advances of one iteration each: (home, first summary, second summary)."""
    home = tmp_path_factory.mktemp("line")
    first = visplay_nightly(line=LINE, preset="smoke", overrides=OVERRIDES, home=str(home))
    second = visplay_nightly(line=LINE, preset="smoke", overrides=OVERRIDES, home=str(home))
    return home, first, second


def test_each_advance_adds_one_iteration_from_the_last_one(line):
    home, first, second = line
    assert [it["iteration"] for it in first["iterations"]] == [1]
    assert [it["iteration"] for it in second["iterations"]] == [1, 2]
    assert second["iterations"][0] == first["iterations"][0]  # iteration 1 is carried over, not walked again
    assert not any(s["cached"] for s in second["iterations"][1]["stages"].values())
    assert _keys(second)[0] == _keys(first)[0]
    assert json.loads((home / "summary.json").read_text())["iterations"] == second["iterations"]


def test_the_line_is_an_mlflow_run_and_the_homes_file_a_copy(line, mlflow_server, tmp_path):
    home, _, second = line
    record = read_line(home, LINE)
    assert (record["finished"], record["target"], record["preset"]) == (2, 2, "smoke")
    assert record["settings"] == load_config("smoke", OVERRIDES).model_copy(update={"iterations": 1}).model_dump(mode="json")
    assert json.loads((home / "lines" / f"{LINE}.json").read_text()) == record
    client = MlflowClient(mlflow_server)
    [run] = _runs(client, "tags.`visplay.level` = 'line'")
    assert run.info.run_id == record["run_id"] and run.info.run_name == f"line {LINE}"
    assert run.data.tags["visplay.line.finished"] == "2" and run.data.tags["visplay.line.config"] == record["config"]
    summary = Path(client.download_artifacts(run.info.run_id, "summary.json", str(tmp_path)))
    assert json.loads(summary.read_text())["iterations"] == second["iterations"]
    assert read_line(tmp_path / "elsewhere", LINE) == record  # any home pointed at the same MLflow sees it


def test_two_advances_are_one_run_of_two_iterations(line):
    home, _, second = line
    config = load_config("smoke", [*OVERRIDES, "iterations=2"])
    whole = self_evolution(config=config, home=str(home), run_name="whole")
    assert all(s["cached"] for it in whole["iterations"] for s in it["stages"].values())  # the same stages
    assert _keys(whole) == _keys(second)


def test_flow_runs_and_their_parts_are_named(line):
    [first], [second] = _flow_runs(any_=[f"{LINE}-iteration-1"]), _flow_runs(any_=[f"{LINE}-iteration-2"])
    assert first.state.is_completed() and second.state.is_completed()
    assert {r.name for r in _flow_runs(like_="iteration-")} >= {"iteration-1", "iteration-2"}
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[
            r.id for r in _flow_runs(any_=["iteration-2"]) if r.parent_task_run_id])))
        assert {f"2-{s}" for s in STAGES} <= {t.name for t in tasks}


def test_mlflow_runs_link_to_their_flow_run_and_code(line, mlflow_server):
    client = MlflowClient(mlflow_server)
    [flow_run] = _flow_runs(any_=[f"{LINE}-iteration-2"])
    [top] = _runs(client, f"tags.`visplay.level` = 'run' and attributes.run_name = '{LINE}-iteration-2'")
    assert top.data.tags["prefect.flow_run_id"] == str(flow_run.id)
    url = top.data.tags["prefect.flow_run_url"]
    assert url.endswith(f"/flow-runs/flow-run/{flow_run.id}") and f"]({url})" in top.data.tags["mlflow.note.content"]
    assert len(top.data.tags["mlflow.source.git.commit"]) == 40
    assert top.data.tags["mlflow.source.name"] == "flows/deploy.py:visplay_nightly"
    children = _runs(client, f"tags.`prefect.flow_run_id` = '{flow_run.id}'")
    assert {r.data.tags.get("visplay.iteration") for r in children if r.data.tags.get("visplay.level") == "iteration"} == {"2"}
    assert {r.data.tags.get("visplay.stage") for r in children} >= set(STAGES)  # iteration 2's stages, computed
    assert top.data.params["questioner.steps"] == "2" and top.data.params["method.tau_low"] == "0.25"
    assert top.data.params["eval.limit"] == "12" and top.data.params["iterations"] == "2"


def test_the_flow_run_holds_the_link_and_the_reports(line, mlflow_server):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    [flow_run] = _flow_runs(any_=[f"{LINE}-iteration-2"])
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run.id])))
    by_key = {a.key: a for a in artifacts}
    assert {f"{LINE}-mlflow", f"{LINE}-iteration-2", f"{LINE}-iteration-2-questions"} <= set(by_key)
    assert f"{LINE}-iteration-1" not in by_key  # iteration 1 was only restored: its report is on the first night's run
    [top] = _runs(MlflowClient(mlflow_server), f"attributes.run_name = '{LINE}-iteration-2'")
    mlflow_url = (f"{mlflow_server}/#/experiments/{top.info.experiment_id}/runs/{top.info.run_id}"
                  "?workflowType=machine_learning")
    assert by_key[f"{LINE}-mlflow"].data == f"[MLflow run {LINE}-iteration-2]({mlflow_url})"  # Prefect's link artifact
    links = {"Prefect flow run": top.data.tags["prefect.flow_run_url"], "MLflow run": mlflow_url}
    assert " · ".join(f"[{name}]({url})" for name, url in links.items()) in by_key[f"{LINE}-iteration-2"].data
    assert json.loads((line[0] / "runs" / LINE / "summary.json").read_text())["links"] == links  # for `visplay report`


def test_models_datasets_and_the_registry(line, mlflow_server):
    _, _, second = line
    client = MlflowClient(mlflow_server)
    [top] = _runs(client, f"attributes.run_name = '{LINE}-iteration-2'")
    [it2] = _runs(client, f"tags.`mlflow.parentRunId` = '{top.info.run_id}' and tags.`visplay.iteration` = '2'")
    inputs = {d.dataset.name: d.dataset for d in it2.inputs.dataset_inputs}
    assert set(inputs) == {"images-iteration-2", "curated-iteration-2"}
    assert inputs["curated-iteration-2"].digest == second["iterations"][1]["stages"]["threshold_filtering"]["key"]
    models = {client.get_logged_model(o.model_id).name: client.get_logged_model(o.model_id) for o in it2.outputs.model_outputs}
    assert set(models) == {"questioner-iteration-2", "reasoner-iteration-2"}
    reasoner = models["reasoner-iteration-2"]
    stage_run = reasoner.tags["visplay.checkpoint"].split("/")[1]
    assert reasoner.source_run_id == stage_run and reasoner.tags["visplay.cache_key"] == \
        second["iterations"][1]["stages"]["reasoner_grpo"]["key"]
    assert "outputs/model/model.safetensors" in {a.path for a in client.list_artifacts(stage_run, "outputs/model")}
    exp = top.info.experiment_id
    assert len(client.search_logged_models([exp], "name = 'reasoner-iteration-1'")) == 1  # not again when restored
    row = second["iterations"][1]
    expected = {k: v for k, v in row.items() if k not in ("iteration", "stages") and v is not None}
    for model in models.values():  # the iteration's metrics, once (the run "whole" restored them)
        assert len(model.metrics) == len(expected) and {m.key: m.value for m in model.metrics} == pytest.approx(expected)
    versions = client.search_model_versions("name = 'visplay-reasoner'")
    assert len({v.source for v in versions}) == len(versions)  # "whole" ended on this Reasoner too: no new version
    [mine] = [v for v in versions if v.source == f"models:/{reasoner.model_id}"]  # the logged model itself
    assert mine.tags["visplay.run_id"] == top.info.run_id and mine.run_id == stage_run
    assert json.loads(reasoner.tags["mlflow.modelVersions"]) == [{"name": "visplay-reasoner", "version": int(mine.version)}]
    assert mine.tags["shapes_accuracy"] == f"{row['shapes_accuracy']:.3f}"
    page = urllib.request.urlopen(f"{mlflow_server}/model-versions/get-artifact?path=MLmodel&name=visplay-reasoner"
                                  f"&version={mine.version}", timeout=30)  # what the version's page asks for
    assert page.status == 200 and yaml.safe_load(page.read())["metadata"]["checkpoint"] == reasoner.tags["visplay.checkpoint"]


def test_a_rerun_restoring_every_stage_is_short_in_mlflow(line, mlflow_server):
    client = MlflowClient(mlflow_server)
    [whole] = _runs(client, "attributes.run_name = 'whole'")  # test_two_advances...: every stage restored
    seconds = (whole.info.end_time - whole.info.start_time) / 1000
    first = _runs(client, f"attributes.run_name = '{LINE}-iteration-1'")[0]
    assert seconds < (first.info.end_time - first.info.start_time) / 1000


def test_a_failed_advance_is_completed_by_the_next(line, monkeypatch):
    home, _, second = line
    real_curate = stage_tasks.curate

    def failing(*args, **kwargs):
        raise RuntimeError("injected failure")

    monkeypatch.setattr(stage_tasks, "curate", failing)
    with pytest.raises(Exception, match="injected failure"):
        visplay_nightly(line=LINE, preset="smoke", overrides=OVERRIDES, home=str(home))
    assert read_line(home, LINE)["target"] == 3 and read_line(home, LINE)["finished"] == 2
    monkeypatch.setattr(stage_tasks, "curate", real_curate)
    assert cli.main(["advance", "--line", LINE, "--home", str(home)]) == 0  # the line's own configuration
    resumed = json.loads((home / "summary.json").read_text())
    assert [it["iteration"] for it in resumed["iterations"]] == [1, 2, 3, 4]
    cached = {name for name, s in resumed["iterations"][2]["stages"].items() if s["cached"]}
    assert cached == set(STAGES[:STAGES.index("threshold_filtering")])  # the failed night, resumed
    assert _flow_runs(any_=[f"{LINE}-iterations-3-4"])[0].state.is_completed()


def test_another_home_goes_on_from_the_line_kept_only_in_mlflow(line, tmp_path, monkeypatch):
    """A second machine's home, pointed at the same MLflow: no stage, line or summary of its own."""
    before = json.loads((line[0] / "summary.json").read_text())["iterations"]
    monkeypatch.setenv("VISPLAY_HOME", str(tmp_path))  # a worker's home
    after = visplay_nightly(line=LINE)["iterations"]  # as a run of the form left at its defaults
    assert after[:-1] == before and after[-1]["iteration"] == len(before) + 1
    assert not any(s["cached"] for s in after[-1]["stages"].values())
    last = before[-1]["stages"]
    assert all((tmp_path / "stages" / f"{s}-{last[s]['key']}" / "model" / "model.safetensors").exists()
               for s in ("questioner_grpo", "reasoner_grpo"))  # fetched from MLflow to start from
    assert read_line(line[0], LINE)["finished"] == len(after)


def test_one_advance_of_a_line_at_a_time_across_machines(line, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.concurrency.sync import concurrency

    before = read_line(line[0], LINE)
    with concurrency(limit_name(LINE), strict=True):  # as an advance on another machine holds it
        with pytest.raises(RunInProgressError, match=f"line {LINE} is already advancing: the slot of the Prefect "
                           f"concurrency limit visplay-line-{LINE} is taken"):
            visplay_nightly(line=LINE, home=str(tmp_path))
    assert read_line(line[0], LINE) == before and not (tmp_path / "runs" / LINE / "summary.json").exists()
    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name(limit_name(LINE))
    assert (limit.limit, limit.active_slots) == (1, 0)  # created by the first advance, every slot given back


def test_a_line_keeps_its_configuration(line):
    home = line[0]
    with pytest.raises(LineError, match="another configuration"):
        visplay_nightly(line=LINE, preset="smoke", overrides=["group_size=2", "questioner.num_generations=2"],
                        home=str(home))
    with pytest.raises(SystemExit, match=f"visplay advance: line {LINE} grows from another configuration"):
        cli.main(["advance", "--line", LINE, "--config", "demo", "--home", str(home)])


def test_a_schedule_says_what_it_advances_and_refuses_a_line_it_would_fail_every_night(tmp_path):
    plan = schedule_plan(str(tmp_path), "fresh", "smoke", 2, "30 1 * * *", "Asia/Tokyo").splitlines()
    digest = load_config("smoke").model_copy(update={"iterations": 1}).digest()
    assert plan[0] == f"serving visplay-nightly/fresh: line fresh, 2 iterations a run, configuration smoke {digest} (a new line)"
    assert re.fullmatch(r"schedule '30 1 \* \* \*' in Asia/Tokyo: next run \d{4}-\d\d-\d\d 01:30 JST, fresh-iterations-1-2", plan[1])
    with pytest.raises(LineError, match="line fresh has not started"):
        schedule_plan(str(tmp_path), "fresh", "", 1, "30 1 * * *", "UTC")
    settings = load_config("smoke").model_copy(update={"iterations": 1})
    client = tracking_client(tracking_uri(tmp_path))  # a line's record, as its MLflow run holds it
    client.create_run(experiment_id(client, tmp_path), run_name="line old", tags={
        "visplay.level": "line", "visplay.line": "old", "visplay.line.preset": "smoke", "visplay.line.config": digest,
        "visplay.line.settings": settings.model_dump_json(), "visplay.line.finished": "3", "visplay.line.target": "3"})
    plan = schedule_plan(str(tmp_path), "old", "", 1, "0 2 * * *", "UTC").splitlines()  # the line's own
    assert plan[0].endswith(f"configuration smoke {digest} (3 iterations finished)") and plan[1].endswith("old-iteration-4")
    with pytest.raises(LineError, match="line old grows from another configuration"):
        schedule_plan(str(tmp_path), "old", "demo", 1, "0 2 * * *", "UTC")


@pytest.mark.parametrize("args, message", [(["--config", "nope"], "no such file or preset"),
                                           (["--config", "smoke", "--iterations", "0"], "at least 1"),
                                           (["--set", "group_size=2"], "a line keeps its own"),
                                           ([], "line x has not started in the MLflow store .*: give the "
                                                "configuration it starts from")])
def test_advance_refuses_bad_arguments_before_any_flow(args, message, tmp_path):
    with pytest.raises(SystemExit, match=message):
        cli.main(["advance", "--line", "x", "--home", str(tmp_path), *args])
    assert not (tmp_path / "lines").exists()


@pytest.mark.parametrize("name", ["a/b", "-x", "", "night 1", "it's"])
def test_a_line_is_named_as_files_mlflow_filters_and_prefect_take_it(name):
    with pytest.raises(LineError, match="a line's name is letters, digits, '.', '_' and '-'"):
        check_line_name(name)
    check_line_name("night-2.b_c")


def test_the_run_form():
    from prefect.utilities.callables import parameter_schema

    form = parameter_schema(visplay_nightly).model_dump()["properties"]
    assert form["preset"]["enum"] == ["", *preset_names()] and form["preset"]["default"] == ""  # "": the line's own
    assert form["iterations"] == {**form["iterations"], "type": "integer", "minimum": 1, "default": 1}
    assert not any("anyOf" in p or p.get("type") == "null" for p in form.values())  # no "Property is type None"
    assert "run_name" not in form and form["line"]["default"] == "nightly"
    assert all(p.get("description") for p in form.values())
