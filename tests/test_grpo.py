"""GRPO jobs with the real tiny model and TRL: in this process, in a fresh one, under `accelerate launch`,
and with LoRA adapters merged into the saved checkpoint; float32 master weights; the batch arithmetic;
the steps that really ran."""

import logging

import pytest
import torch
from safetensors.torch import load_file

from visplay_core.config import BASE_CHECKPOINT, TrainingConfig, LoraSettings
from visplay_core.corpus import ingest, write_embedded_corpus
from visplay_core.grpo import GRPOJob, launch, per_device_batch
from visplay_core.method import MethodConfig
from visplay_core.model import load_model, load_processor, save_checkpoint

ROOT = BASE_CHECKPOINT.parent.parent


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    world = write_embedded_corpus(tmp_path_factory.mktemp("world"), 2, seed=0)
    folder = tmp_path_factory.mktemp("corpus")
    manifest = ingest(world / "images", folder, max_pixels=112 * 112)
    return folder, [m["id"] for m in manifest.images]


def _job(tmp_path, images, training=TrainingConfig(), model=str(BASE_CHECKPOINT), **settings):
    folder, ids = images
    # Labels the base gets right on some samples and wrong on others, so GRPO's advantages are not all 0.
    rows = [{"image_id": i, "question": "Is there a red circle?", "pseudo_label": "yes"} for i in ids]
    settings = {"steps": 1, "learning_rate": 1e-3, "prompts_per_step": 1, **settings}
    return GRPOJob(role="reasoner", model=model, output=str(tmp_path / "out"), work_dir=str(tmp_path / "work"),
                   images_folder=str(folder), rows=rows, num_generations=4, temperature=1.5, max_new_tokens=48,
                   save_steps=1, kl_beta=0.0, seed=0, method=MethodConfig(), training=training, **settings)


def _changed(path, base=BASE_CHECKPOINT):
    before, after = load_file(base / "model.safetensors"), load_file(path / "model" / "model.safetensors")
    assert before.keys() == after.keys()
    return [k for k in before if not (before[k].float() == after[k].float()).all()]


@pytest.mark.parametrize("launcher", ["subprocess", "accelerate"])
def test_a_launched_job_trains_saves_and_logs(tmp_path, images, launcher):
    config = str(ROOT / "deployments" / "accelerate" / "cpu.yaml") if launcher == "accelerate" else None
    result = launch(_job(tmp_path, images, TrainingConfig(launcher=launcher, accelerate_config=config)))
    assert [row["step"] for row in result.history if "reward" in row] == [1] and result.steps == 1
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


def test_a_bf16_checkpoint_trains_in_float32_so_a_1e_6_step_moves_its_weights(tmp_path, images):
    bf16 = tmp_path / "bf16"
    save_checkpoint(load_model(BASE_CHECKPOINT, dtype=torch.bfloat16), load_processor(BASE_CHECKPOINT), bf16)
    assert load_model(bf16).dtype == torch.bfloat16  # as real checkpoints are saved
    assert launch(_job(tmp_path, images, model=str(bf16), learning_rate=1e-6)).steps == 1
    before, after = load_file(bf16 / "model.safetensors"), load_file(tmp_path / "out" / "model" / "model.safetensors")
    assert {t.dtype for t in after.values()} == {torch.float32}  # the master weights are what is saved
    changed = sum(int((before[k].float() != after[k]).sum()) for k in before)
    assert changed > 0.9 * sum(t.numel() for t in before.values())  # bf16 weights would keep nearly all


@pytest.mark.parametrize("prompts, generations, world, expected", [(16, 8, 1, 128), (16, 8, 4, 32), (2, 8, 4, 4),
                                                                   (1, 4, 2, 2), (3, 2, 3, 2)])
def test_prompts_per_step_is_global(prompts, generations, world, expected):
    assert per_device_batch(prompts, generations, world) == expected
    assert expected * world == prompts * generations  # one step sees prompts_per_step prompts in all


def test_a_batch_that_cannot_be_split_over_the_processes_says_so():
    with pytest.raises(ValueError, match=r"3 × 3 = 9 completions per step cannot be split evenly over 2 processes"):
        per_device_batch(3, 3, 2)


def test_fewer_rows_than_a_step_needs_reports_the_steps_that_ran_and_warns(tmp_path, images, caplog):
    with caplog.at_level(logging.WARNING, logger="visplay"):
        result = launch(_job(tmp_path, images, steps=3, prompts_per_step=4))  # 2 rows
    assert result.steps == 0
    assert "GRPO reasoner: 0 of 3 steps ran (2 rows for 4 prompts per step" in caplog.text
    assert (tmp_path / "out" / "model" / "model.safetensors").exists()
