"""Bad input and hard crashes: the smoke flow on a corpus full of bad files, and a SIGKILL while a
checkpoint is being written."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from prefect.settings import PREFECT_API_URL

from flows.self_evolution import self_evolution
from tasks.tracking import EXPERIMENT
from visplay_core.config import load_config

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


KILLER = textwrap.dedent("""
    import os, signal, sys
    from visplay_core import grpo

    def save_then_die(model, processor, path):
        model.save_pretrained(path)  # the weights are written, the processor never is
        os.kill(os.getpid(), signal.SIGKILL)

    grpo.save_checkpoint = save_then_die
    from flows.self_evolution import self_evolution
    from visplay_core.config import load_config
    self_evolution(config=load_config("smoke", ["iterations=1"]), home=sys.argv[1])
""")


def test_sigkill_while_writing_a_checkpoint_redoes_that_stage(tmp_path):
    # The child talks to this session's Prefect server: a temporary server of its own would outlive the
    # SIGKILL and hold the output pipes open.
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    home = tmp_path / "home"
    killed = subprocess.run([sys.executable, "-c", KILLER, str(home)], cwd=ROOT, env=env, capture_output=True, timeout=600)
    assert killed.returncode == -9, killed.stderr.decode()[-2000:]
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
