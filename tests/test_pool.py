"""Lines shared by machines, against one `visplay up` (real Prefect and MLflow servers): a process work pool
deployed from the shipped deployments/prefect.yaml, whose two `prefect worker` processes each run in a home of
their own (two worker machines) and take turns at one line; and two lines served side by side by `visplay
serve`, each night advancing its own line. Every line is the smoke preset made tiny (no GRPO step: what is under
test is where a line goes on from, not what it learns)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from flows.line import limit_name
from flows.self_evolution import STAGES
from flows.servers import down, up
from tasks.mlflow_client import EXPERIMENT
from tests.net import free_port
from tests.test_operations import _wait

ROOT = Path(__file__).resolve().parent.parent
TINY = [f"{key}={value}" for key, value in {
    "corpus_size": 4, "images_per_iteration": 1, "group_size": 2, "questioner.num_generations": 2,
    "candidates_per_image": 2, "method.m_questioner": 2, "method.m_curation": 2, "questioner.max_new_tokens": 16,
    "reasoner.max_new_tokens": 16, "questioner.steps": 0, "reasoner.steps": 0, "eval.limit": 6, "eval.votes": 0}.items()]
LINE = "pooled"
TURNS = ["a", "b", "a"]  # the work queue, so the worker, that takes each night: both hand the line over


def _stop(process: subprocess.Popen, how: int = signal.SIGKILL) -> None:
    """End a process started in a session of its own, with everything it started (a worker's flow runs)."""
    try:
        os.killpg(process.pid, how)
        process.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(30)
    except ProcessLookupError:
        pass


def _finished(client, flow_run_id, what: str):
    return _wait(lambda: (r := client.read_flow_run(flow_run_id)).state.is_final() and r, 600, what)


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """`visplay up` on free ports: (its home, the content of servers.json)."""
    home = tmp_path_factory.mktemp("servers")
    info = up(home, prefect_port=free_port(), mlflow_port=free_port())
    yield home, info
    down(home)


@pytest.fixture(scope="module")
def prefect(servers):
    """A Prefect client of the servers' Prefect."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: servers[1]["prefect"]["api"]}), get_client(sync_client=True) as client:
        yield client


@pytest.fixture(scope="module")
def pool(servers, prefect, tmp_path_factory):
    """The shipped deployment on a process work pool with two workers, each in its own home and on its own work
    queue, and one line advanced by three triggers taken in turn by the workers ``TURNS``: (the two homes, the
    three flow runs, seconds from the first trigger to the last run's end)."""
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.deployments import run_deployment

    _, info = servers
    env = {**os.environ, "PREFECT_API_URL": info["prefect"]["api"], "MLFLOW_TRACKING_URI": info["mlflow"]["api"]}
    prefect.create_work_pool(WorkPoolCreate(name="visplay", type="process"))  # the yaml's pool
    homes, workers = {}, {}
    try:
        for queue in ("a", "b"):
            prefect.create_work_queue(name=queue, work_pool_name="visplay")
            homes[queue] = tmp_path_factory.mktemp(f"worker-{queue}")
            with open(homes[queue] / "worker.log", "w") as log:
                workers[queue] = subprocess.Popen(
                    [sys.executable, "-m", "prefect", "worker", "start", "--pool", "visplay", "--work-queue", queue],
                    cwd=ROOT, env={**env, "VISPLAY_HOME": str(homes[queue]), "PREFECT_WORKER_QUERY_SECONDS": "1"},
                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deployed = subprocess.run([sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--prefect-file",
                                   "deployments/prefect.yaml", "--all"], cwd=ROOT, env=env, capture_output=True,
                                  text=True, timeout=300)
        assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]
        start, runs = time.time(), []
        for k, queue in enumerate(TURNS, 1):
            triggered = run_deployment("visplay-nightly/nightly-pool", timeout=0, work_queue_name=queue,
                                       parameters={"line": LINE, "preset": "smoke", "overrides": TINY})
            runs.append(_finished(prefect, triggered.id, f"night {k} on worker {queue}"))
            assert runs[-1].state.is_completed(), (runs[-1].state, (homes[queue] / "worker.log").read_text()[-5000:])
        seconds = time.time() - start
    finally:
        for worker in workers.values():
            _stop(worker)
    print(f"three nights on two workers: {seconds:.0f} s")
    return homes, runs, seconds


def test_three_triggers_on_two_workers_with_their_own_homes_are_iterations_1_2_3_of_one_line(servers, pool):
    homes, runs, _ = pool
    assert [r.name for r in runs] == [f"{LINE}-iteration-{k}" for k in (1, 2, 3)]
    assert [r.work_queue_name for r in runs] == TURNS
    client = MlflowClient(servers[1]["mlflow"]["api"])
    exp = client.get_experiment_by_name(EXPERIMENT).experiment_id
    recorded = client.search_runs([exp], f"tags.`visplay.run` = '{LINE}'", max_results=1000)
    advances = sorted((r for r in recorded if r.data.tags.get("visplay.level") == "run"), key=lambda r: r.info.start_time)
    assert [(r.info.run_name, r.data.tags["visplay.home"]) for r in advances] == [
        (f"{LINE}-iteration-{k}", str(homes[queue])) for k, queue in enumerate(TURNS, 1)]  # each on its worker's home
    iterations = sorted(int(r.data.tags["visplay.iteration"]) for r in recorded
                        if r.data.tags.get("visplay.level") == "iteration")
    assert iterations == [1, 2, 3]  # no night walked an earlier iteration again
    computed = sorted((r.data.tags["visplay.iteration"], r.data.tags["visplay.stage"]) for r in recorded
                      if r.data.tags.get("visplay.complete") == "true")
    assert computed == sorted({("0", "benchmark_eval")} | {(str(k), s) for k in (1, 2, 3) for s in STAGES})  # once each
    [line] = client.search_runs([exp], f"tags.`visplay.level` = 'line' and tags.`visplay.line` = '{LINE}'")
    assert (line.data.tags["visplay.line.finished"], line.data.tags["visplay.line.target"]) == ("3", "3")


def test_each_worker_went_on_from_the_other_ones_models_and_tells_the_same_story(pool):
    homes, _, _ = pool
    summaries = {q: json.loads((homes[q] / "runs" / LINE / "summary.json").read_text())["iterations"] for q in homes}
    assert [it["iteration"] for it in summaries["a"]] == [1, 2, 3] and [it["iteration"] for it in summaries["b"]] == [1, 2]
    assert summaries["a"][:2] == summaries["b"]  # a's iteration 1 as b read it from MLflow, and b's iteration 2
    for queue, before in (("b", summaries["a"][0]), ("a", summaries["b"][1])):  # where each night started from
        for stage in ("questioner_grpo", "reasoner_grpo"):
            key = before["stages"][stage]["key"]
            assert (homes[queue] / "stages" / f"{stage}-{key}" / "model" / "model.safetensors").exists(), (queue, stage)
    assert json.loads((homes["a"] / "lines" / f"{LINE}.json").read_text())["finished"] == 3  # the home's copy


def test_the_line_is_held_through_prefect_and_given_back(servers, pool, prefect):
    limit = prefect.read_global_concurrency_limit_by_name(limit_name(LINE))
    assert (limit.limit, limit.active_slots) == (1, 0)
    assert (servers[0] / "prefect" / "concurrency_leases").is_dir()  # on disk: a restarted server gives slots back


def test_two_lines_served_side_by_side_each_night_advancing_its_own(servers, prefect):
    """Two `visplay serve --line` from the same servers: two deployments named after their lines; a trigger of
    each with the form's defaults (a night) advances that deployment's line only."""
    from prefect.deployments import run_deployment

    home, _ = servers
    serving = {}
    try:
        for line in ("east", "west"):
            with open(home / f"serve-{line}.log", "w") as log:
                serving[line] = subprocess.Popen(
                    [sys.executable, "-m", "flows.cli", "serve", "--home", str(home), "--line", line, "--config", "smoke",
                     "--cron", "0 0 1 1 *"], cwd=ROOT, env={**os.environ, "PREFECT_RUNNER_POLL_FREQUENCY": "1"},
                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

        def deployment(line):
            assert serving[line].poll() is None, (home / f"serve-{line}.log").read_text()
            return next((d for d in prefect.read_deployments() if d.name == line), None)

        deployments = {line: _wait(lambda: deployment(line), 180, f"the deployment of line {line}") for line in serving}
        nights = {line: run_deployment(f"visplay-nightly/{line}", parameters={"overrides": TINY}, timeout=0)
                  for line in serving}
        ended = {line: _finished(prefect, night.id, f"the night of {line}") for line, night in nights.items()}
    finally:
        for process in serving.values():
            _stop(process, signal.SIGTERM)
    for line in serving:
        assert deployments[line].parameters["line"] == line
        assert ended[line].state.is_completed(), (ended[line].state, (home / f"serve-{line}.log").read_text()[-5000:])
        assert ended[line].name == f"{line}-iteration-1" and ended[line].parameters["line"] == line
        record = json.loads((home / "lines" / f"{line}.json").read_text())
        assert (record["line"], record["finished"]) == (line, 1)
