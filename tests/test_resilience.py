"""Bad input and hard crashes: the smoke flow on a corpus full of bad files, a SIGKILL while a checkpoint
is being written, SIGKILLs right after each role's first GRPO trainer checkpoint (the resumed run ends with
the uninterrupted run's numbers and weights), a failed run's output; and servers that die under a run: an
MLflow server killed and restarted (nothing lost), a Prefect server killed (the run leaves at once, its
rerun resumes), `serve` after `visplay down`."""

import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest
from mlflow.tracking import MlflowClient
from prefect.settings import PREFECT_API_URL

from flows.console import PREFECT_GRACE_SECONDS, SERVE_GRACE_SECONDS
from flows.self_evolution import STAGES, self_evolution
from flows.servers import down, read_servers, up
from tasks.mlflow_client import EXPERIMENT
from visplay_core.config import load_config
from visplay_core.io import read_jsonl
from tests.net import CuttingProxy, free_port

pytestmark = pytest.mark.usefixtures("prefect_server")
ROOT = Path(__file__).resolve().parent.parent


def test_smoke_flow_on_a_corpus_with_every_bad_case(mixed, tmp_path):
    src, good, bad = mixed
    config = load_config("smoke", [f"corpus={src}", "iterations=1", "images_per_iteration=6"])
    summary = self_evolution(config=config, home=str(tmp_path))
    assert [it["iteration"] for it in summary["iterations"]] == [1]
    manifests = list((tmp_path / "corpus").glob("*/manifest.json"))
    assert len(manifests) == 1
    manifest = json.loads(manifests[0].read_text())
    assert {s["source"]: s["reason"] for s in manifest["skipped"]} == bad
    assert {i["source"] for i in manifest["images"]} == set(good)  # no good image lost
    rollout = next((tmp_path / "stages").glob("question_rollout-*/questions.jsonl")).read_text().splitlines()
    assert {json.loads(r)["image_id"] for r in rollout} == {i["id"] for i in manifest["images"]}
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id],
                             "tags.`visplay.level` = 'run'")[0]
    for reason in set(bad.values()):
        assert run.data.metrics[f"corpus.skipped.{reason}"] == list(bad.values()).count(reason)


# A smoke run in a child process, SIGKILLed (argv: home, when, config overrides) while the first GRPO stage
# writes its model ("model-write"), or right after a role's GRPO stage wrote its first trainer checkpoint
# ("questioner" or "reasoner").
KILLER = textwrap.dedent("""
    import logging, os, signal, sys
    from transformers import TrainerCallback
    from visplay_core import grpo

    def die(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)

    def save_then_die(model, processor, path):
        model.save_pretrained(path)  # the weights are written, the processor never is
        die()

    class DieOnSave(TrainerCallback):
        def on_save(self, *args, **kwargs):  # called once the checkpoint is whole
            die()

    def trainer_that_dies(job, *args):
        trainer = make_trainer(job, *args)
        if job.role == sys.argv[2]:
            trainer.add_callback(DieOnSave)
        return trainer

    if sys.argv[2] == "model-write":
        grpo.save_checkpoint = save_then_die
    else:
        make_trainer, grpo.grpo_trainer = grpo.grpo_trainer, trainer_that_dies
    logging.getLogger("visplay").addHandler(logging.StreamHandler())  # "GRPO <role>: resuming from ..."
    logging.getLogger("visplay").setLevel(logging.INFO)
    from flows.self_evolution import self_evolution
    from visplay_core.config import load_config
    self_evolution(config=load_config("smoke", sys.argv[3:]), home=sys.argv[1])
""")


def _killed_run(home: Path, when: str, *settings: str) -> str:
    """The KILLER's run; returns what it wrote to stderr. The child talks to this session's Prefect server: a
    temporary server of its own would outlive the SIGKILL and hold the output pipes open."""
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    killed = subprocess.run([sys.executable, "-c", KILLER, str(home), when, *settings], cwd=ROOT, env=env,
                            capture_output=True, timeout=600)
    assert killed.returncode == -9, killed.stderr.decode()[-2000:]
    return killed.stderr.decode()


def test_sigkill_while_writing_a_checkpoint_redoes_that_stage(tmp_path):
    home = tmp_path / "home"
    _killed_run(home, "model-write", "iterations=1")
    assert not list((home / "stages").glob("questioner_grpo-*/_COMPLETE"))
    summary = self_evolution(config=load_config("smoke", ["iterations=1"]), home=str(home))
    stages = summary["iterations"][0]["stages"]
    assert stages["question_rollout"]["cached"] and stages["confidence_scoring"]["cached"]
    assert not stages["questioner_grpo"]["cached"]
    grpo = list((home / "stages").glob("questioner_grpo-*"))
    assert len(grpo) == 1 and (grpo[0] / "model" / "processor_config.json").exists()
    assert not list((home / "stages").glob(".*tmp-*"))  # the killed attempt's leftovers are gone
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id],
                              "tags.`visplay.stage` = 'questioner_grpo'")
    assert sorted(r.info.status for r in runs) == ["FINISHED", "KILLED"]


RESUMED = ["iterations=1", "eval.limit=6", "eval.votes=0"]  # smoke: 2 GRPO steps per role, each saved


def test_runs_killed_after_each_roles_first_trainer_checkpoint_resume_to_the_uninterrupted_numbers(tmp_path, caplog):
    uninterrupted = tmp_path / "uninterrupted"
    reference = self_evolution(config=load_config("smoke", RESUMED), home=str(uninterrupted))
    home = tmp_path / "killed"
    _killed_run(home, "questioner", *RESUMED)
    assert list(home.glob("work/questioner_grpo-*/checkpoint-1/trainer_state.json"))
    assert not list(home.glob("stages/questioner_grpo-*/_COMPLETE"))
    # The rerun resumes the Questioner's update from its checkpoint, and dies in the Reasoner's.
    assert "GRPO questioner: resuming from " in _killed_run(home, "reasoner", *RESUMED)
    assert list(home.glob("work/reasoner_grpo-*/checkpoint-1/trainer_state.json"))
    with caplog.at_level(logging.INFO, logger="visplay"):
        resumed = self_evolution(config=load_config("smoke", RESUMED), home=str(home))
    assert "GRPO reasoner: resuming from " in caplog.text
    expected = _stage_numbers(uninterrupted)
    steps = [numbers["grpo"] for stage, numbers in expected.items() if "_grpo-" in stage]
    assert len(steps) == 2 and all(log[0]["step"] == 1 and log[0]["grad_norm"] > 0 for log in steps)  # step 1 moved
    assert _stage_numbers(home) == expected
    assert _iteration_metrics(resumed) == _iteration_metrics(reference)
    weights = _weights(uninterrupted)
    assert len(weights) == 2 and _weights(home) == weights


def _iteration_metrics(summary: dict) -> list[dict]:
    """The base's and each iteration's row of a run's summary, without its stages' timings and model ids."""
    return [summary["base"]["shapes_accuracy"],
            *({k: v for k, v in row.items() if k not in ("stages", "models")} for row in summary["iterations"])]


def _stage_numbers(home: Path) -> dict:
    """Every stage's metrics, by stage folder (its name holds the stage's cache key: the keys of its inputs,
    trained checkpoints included), without the wall-clock step times of the GRPO logs."""
    numbers = {}
    for metrics in home.glob("stages/*/metrics.json"):
        values = json.loads(metrics.read_text())
        if "grpo" in values:
            values["grpo"] = [{k: v for k, v in row.items() if k != "step_time"} for row in values["grpo"]]
        numbers[metrics.parent.name] = values
    return numbers


def _weights(home: Path) -> dict:
    """A digest of each updated model's weights file, by stage."""
    return {path.parent.parent.name.split("-")[0]: hashlib.sha256(path.read_bytes()).hexdigest()
            for path in home.glob("stages/*_grpo-*/model/model.safetensors")}


def test_a_failed_run_prints_its_traceback_once_and_one_last_line(tmp_path):
    bad = tmp_path / "not-a-model"
    bad.mkdir()
    (bad / "config.json").write_text("{}")
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    done = subprocess.run([*VISPLAY, "run", "--config", "smoke", "--set", f"base_model={bad}", "--home", str(tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert done.stderr.count("Traceback (most recent call last)") == 1, done.stderr
    assert done.stderr.strip().splitlines()[-1] == ("visplay: run failed: ValueError: Unrecognized model in "
                                                    f"{bad}. Should have a `model_type` key in its config.json.")


def test_a_grpo_stage_shows_one_progress_bar_and_keeps_the_trainers_log_dicts_off_the_terminal(tmp_path, capfd):
    from visplay_core.config import BASE_CHECKPOINT
    from visplay_core.corpus import ingest, write_embedded_corpus
    from visplay_core.grpo import GRPOJob, launch
    from visplay_core.method import MethodConfig

    world = write_embedded_corpus(tmp_path / "world", 2, seed=0)
    ids = [m["id"] for m in ingest(world / "images", tmp_path / "corpus", max_pixels=112 * 112).images]
    job = GRPOJob(role="reasoner", model=str(BASE_CHECKPOINT), output=str(tmp_path / "out"), work_dir=str(tmp_path / "work"),
                  images_folder=str(tmp_path / "corpus"), steps=2, learning_rate=1e-3, prompts_per_step=1,
                  rows=[{"image_id": i, "question": "How many circles are there?", "pseudo_label": "1"} for i in ids],
                  num_generations=4, temperature=1.5, max_new_tokens=16, save_steps=1, kl_beta=0.0, seed=0,
                  method=MethodConfig())
    history = launch(job)
    printed = capfd.readouterr()
    terminal = printed.out + printed.err
    assert "'loss'" not in terminal and "train_runtime" not in terminal, terminal
    assert "2/2 [" in terminal  # the trainer's bar
    logged = read_jsonl(tmp_path / "out" / "history.jsonl")
    assert logged == history.history and [r["step"] for r in logged if "loss" in r] == [1, 2]


# Real servers of a home of their own (`visplay up`), killed under a running `visplay run`.
VISPLAY = [sys.executable, "-m", "flows.cli"]
SMOKE = ["--config", "smoke", "--set", "iterations=1", "--set", "eval.limit=12"]



@pytest.fixture
def served_home(tmp_path_factory):
    """A home with servers of its own: each test breaks them its own way."""
    home = tmp_path_factory.mktemp("servers")
    up(home, prefect_port=free_port(), mlflow_port=free_port())
    yield home
    down(home)


def _start_run(home: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen([*VISPLAY, "run", *SMOKE, *extra, "--home", str(home)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, env={**os.environ, **(env or {})})


def _when_a_stage_finishes(home: Path, run: subprocess.Popen, timeout: float = 300) -> None:
    before = len(list(home.glob("stages/*/_COMPLETE")))
    deadline = time.time() + timeout
    while len(list(home.glob("stages/*/_COMPLETE"))) == before:
        assert run.poll() is None and time.time() < deadline, run.communicate()
        time.sleep(0.2)


def _kill(server: dict) -> None:
    os.killpg(server["pid"], signal.SIGKILL)
    while any(p.status() != psutil.STATUS_ZOMBIE for p in psutil.process_iter() if _in_group(p, server["pid"])):
        time.sleep(0.1)


def _in_group(proc: psutil.Process, pgid: int) -> bool:
    try:
        return os.getpgid(proc.pid) == pgid
    except ProcessLookupError:
        return False


def test_mlflow_server_killed_mid_request_and_restarted_loses_nothing(served_home):
    # The run talks to MLflow through a proxy that, once a stage has finished, lets the next log-batch request
    # reach the server, kills the server, and hands the run half of the answer: killed mid-request.
    servers = read_servers(served_home)
    proxy = CuttingProxy(servers["mlflow"]["port"])
    run = _start_run(served_home, "--name", "mlflow-restarted", env={"MLFLOW_TRACKING_URI": proxy.url})
    _when_a_stage_finishes(served_home, run)
    proxy.cut("/runs/log-batch", before=lambda: _kill(servers["mlflow"]))
    deadline = time.time() + 300
    while not proxy.cut_paths:
        assert run.poll() is None and time.time() < deadline, run.communicate()
        time.sleep(0.2)
    time.sleep(3)
    restarted = up(served_home, prefect_port=servers["prefect"]["port"], mlflow_port=servers["mlflow"]["port"])
    assert restarted["prefect"] == servers["prefect"] and restarted["mlflow"]["pid"] != servers["mlflow"]["pid"]
    out, err = run.communicate(timeout=600)
    proxy.close()
    assert run.returncode == 0, err[-3000:]
    assert "'loss'" not in out + err and "Loading weights" not in err and "Traceback" not in err  # one bar per GRPO stage
    lines = out.strip().splitlines()  # ends with the summary table, the base's headroom, the verdict, the kept one
    assert lines[-5].startswith("base ") and lines[-3].startswith("base headroom ")
    assert lines[-2].startswith("iteration 1 against the base: ") and lines[-1].startswith("kept iteration 1 ")
    client = MlflowClient(servers["mlflow"]["api"])
    runs = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id],
                              "tags.`visplay.run` = 'mlflow-restarted' and tags.`visplay.complete` = 'true'")
    assert {(r.data.tags["visplay.iteration"], r.data.tags["visplay.stage"]) for r in runs} == \
        {("0", "benchmark_eval")} | {("1", s) for s in STAGES}


def test_a_run_whose_prefect_server_dies_exits_promptly_and_its_rerun_resumes(served_home):
    servers = read_servers(served_home)
    command = ["--name", "prefect-died", "--set", "seed=7"]  # stages of their own, not the run above's
    run = _start_run(served_home, *command)
    _when_a_stage_finishes(served_home, run)
    _kill(servers["prefect"])
    killed = time.time()
    out, err = run.communicate(timeout=120)
    assert run.returncode == 1 and time.time() - killed < PREFECT_GRACE_SECONDS + 15, err[-3000:]
    assert "Traceback" not in err, err[-6000:]
    assert err.strip().splitlines()[-1].startswith(f"visplay: the Prefect server at {servers['prefect']['api']} "
                                                   "stopped answering"), err[-3000:]
    up(served_home, prefect_port=servers["prefect"]["port"], mlflow_port=servers["mlflow"]["port"])
    rerun = _start_run(served_home, *command)
    out, err = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, err[-3000:]
    summary = json.loads((served_home / "runs" / "prefect-died" / "summary.json").read_text())
    assert summary["base"]["stage"]["cached"]  # finished before the server died: restored, not recomputed


def test_serve_stops_within_seconds_once_its_servers_are_down(served_home, tmp_path):
    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        serve = subprocess.Popen([*VISPLAY, "serve", "--home", str(served_home), "--config", "smoke"], cwd=ROOT, stdout=out,
                                 stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 180
        while "visplay-nightly" not in log.read_text():  # Prefect's "Your flow ... is being served" banner
            assert serve.poll() is None and time.time() < deadline, log.read_text()
            time.sleep(0.5)
        down(served_home)
        stopped = time.time()
        serve.wait(timeout=30)
        assert time.time() - stopped < SERVE_GRACE_SECONDS + 12
    finally:
        if serve.poll() is None:
            os.killpg(serve.pid, signal.SIGKILL)
    text = log.read_text()
    assert serve.returncode == 1 and "Traceback" not in text, text
    last = text.strip().splitlines()[-1]
    assert last.startswith("visplay: the Prefect server at http") and last.endswith("; stopped serving"), text


def test_the_console_shows_a_traceback_once_and_none_for_a_lost_connection():
    import io
    import logging

    import httpx

    from flows.console import TracebackOnce

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(TracebackOnce(logging.Formatter("%(levelname)s %(message)s")))
    logger = logging.getLogger("visplay-test-console")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        for error in (httpx.ConnectError("All connection attempts failed"), ValueError("bad")):
            try:
                try:
                    raise error
                except Exception as inner:
                    raise RuntimeError("the service failed") from inner
            except RuntimeError as outer:
                logger.error("first", exc_info=outer)
                logger.error("again", exc_info=outer)
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert text.count("Traceback (most recent call last)") == 2  # the ValueError's chain, once: two tracebacks
    assert "httpx.ConnectError" not in text and "ValueError: bad" in text
