"""GRPO jobs with the real tiny model and TRL: in this process, in a fresh one, under `accelerate launch`,
and with LoRA adapters merged into the saved checkpoint."""

import pytest
from safetensors.torch import load_file

from visplay_core.config import BASE_CHECKPOINT, TrainingConfig, LoraSettings
from visplay_core.corpus import ingest, write_embedded_corpus
from visplay_core.grpo import GRPOJob, launch
from visplay_core.method import MethodConfig
from visplay_core.model import load_model

ROOT = BASE_CHECKPOINT.parent.parent


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    world = write_embedded_corpus(tmp_path_factory.mktemp("world"), 2, seed=0)
    folder = tmp_path_factory.mktemp("corpus")
    manifest = ingest(world / "images", folder, max_pixels=112 * 112)
    return folder, [m["id"] for m in manifest.images]


def _job(tmp_path, images, training=TrainingConfig(), model=str(BASE_CHECKPOINT)):
    folder, ids = images
    # Labels the base gets right on some samples and wrong on others, so GRPO's advantages are not all 0.
    rows = [{"image_id": i, "question": "How many circles are there?", "pseudo_label": "1"} for i in ids]
    return GRPOJob(role="reasoner", model=model, output=str(tmp_path / "out"), work_dir=str(tmp_path / "work"),
                   images_folder=str(folder), rows=rows, steps=1, learning_rate=1e-3, prompts_per_step=1,
                   num_generations=4, temperature=1.5, max_new_tokens=48, save_steps=1, kl_beta=0.0, seed=0,
                   method=MethodConfig(), training=training)


def _changed(path):
    before, after = load_file(BASE_CHECKPOINT / "model.safetensors"), load_file(path / "model" / "model.safetensors")
    assert before.keys() == after.keys()
    return [k for k in before if not (before[k] == after[k]).all()]


@pytest.mark.parametrize("launcher", ["subprocess", "accelerate"])
def test_a_launched_job_trains_saves_and_logs(tmp_path, images, launcher):
    config = str(ROOT / "deployments" / "accelerate" / "cpu.yaml") if launcher == "accelerate" else None
    history = launch(_job(tmp_path, images, TrainingConfig(launcher=launcher, accelerate_config=config)))
    assert [row["step"] for row in history if "reward" in row] == [1]
    assert _changed(tmp_path / "out")
    assert (tmp_path / "work" / "job.json").exists() and (tmp_path / "work" / "launch.log").exists()
    load_model(tmp_path / "out" / "model")  # a whole checkpoint, processor included
    assert (tmp_path / "out" / "model" / "processor_config.json").exists()


def test_lora_adapters_are_merged_into_a_plain_checkpoint(tmp_path, images):
    launch(_job(tmp_path, images, TrainingConfig(lora=LoraSettings(r=4, alpha=8, dropout=0.0))))
    changed = _changed(tmp_path / "out")
    assert changed and all("lora" not in k for k in changed)
    assert all(k.endswith("weight") for k in changed)  # adapters only touch linear weights, biases stay


def test_a_failed_launch_says_why_and_where_the_log_is(tmp_path, images):
    job = _job(tmp_path, images, TrainingConfig(launcher="subprocess"), model=str(tmp_path / "missing"))
    with pytest.raises(RuntimeError, match="GRPO reasoner job failed") as err:
        launch(job)
    assert "launch.log" in str(err.value) and "missing" in str(err.value)
    assert not (tmp_path / "out" / "model").exists()
