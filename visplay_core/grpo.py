"""GRPO updates of either role with TRL's ``GRPOTrainer``, described as data so they can run anywhere.

A ``GRPOJob`` holds everything one update needs (the checkpoint to start from, the rows as image ids
and questions, the role's settings, how the Questioner's reward gets its votes). ``launch`` runs it in
this process (the embedded default), in a fresh Python process (one GPU: the stage's memory is freed
when it ends), or under ``accelerate launch`` with a given config (several GPUs, DeepSpeed ZeRO): every
rank runs ``python -m visplay_core.grpo JOB.json`` and the main one saves the result.

The trainer saves checkpoints every ``save_steps`` into the job's work folder and resumes from the last
complete one, so an interrupted GRPO stage continues where it stopped.

Precision: the model trains in float32 whatever dtype it was saved in (master weights; on CUDA the
forward and backward run under bf16 autocast), and is saved in float32: AdamW steps of the paper's
1e-6 are below bf16's resolution near typical weights, and would vanish in bf16 weights.

``prompts_per_step`` counts prompts across all processes: each of W processes trains on
``prompts_per_step × num_generations / W`` completions per step (``per_device_batch``).
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Callable, Literal, Sequence

import torch
from pydantic import BaseModel, Field
from transformers import ProgressCallback, TrainerCallback
from trl import GRPOConfig, GRPOTrainer

from . import prompts
from .corpus import load_images
from .io import read_jsonl, write_json, write_jsonl
from .config import TrainingConfig
from .method import UNANSWERABLE_VOTE_SHARE, MethodConfig
from .model import load_model, load_processor, save_checkpoint


class ScorerSpec(BaseModel):
    """How the Questioner's reward gets the Reasoner's vote on each question it writes."""

    reasoner: str
    m: int
    temperature: float
    max_new_tokens: int
    seed: int
    engine: Literal["hf", "vllm"] = "hf"
    oracle_error: float | None = None
    truth: str | None = None  # the embedded world's folder, for an oracle Reasoner
    unanswerable_vote_share: float = UNANSWERABLE_VOTE_SHARE
    trust_remote_code: bool = False


class GRPOJob(BaseModel):
    """One GRPO update of one role. ``rows``: ``{"image_id"}`` for the Questioner, ``{"image_id",
    "question", "pseudo_label"}`` for the Reasoner. The result goes to ``output``/model and the trainer's
    log to ``output``/history.jsonl."""

    role: Literal["questioner", "reasoner"]
    model: str
    output: str
    work_dir: str
    images_folder: str
    rows: list[dict]
    steps: int
    learning_rate: float
    prompts_per_step: int
    num_generations: int
    temperature: float
    max_new_tokens: int
    save_steps: int
    kl_beta: float
    lr_scheduler: str = "constant"
    warmup_steps: int = 0
    scale_rewards: str = "group"
    loss_type: str = "dapo"
    freeze_vision: bool = False
    seed: int
    method: MethodConfig
    scorer: ScorerSpec | None = None
    engine: Literal["hf", "vllm"] = "hf"
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    trust_remote_code: bool = False


class GRPOResult(BaseModel):
    """What a GRPO job did: the optimizer steps that ran (fewer than asked when the rows cannot fill a
    step) and the trainer's log."""

    steps: int
    history: list[dict]


class _History(TrainerCallback):
    def __init__(self):
        self.rows: list[dict] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs:
            self.rows.append({"step": state.global_step, **{k: v for k, v in logs.items() if isinstance(v, (int, float))}})


class _ProgressBar(ProgressCallback):
    """The trainer's progress bar, without the raw log dicts it would print under it: those go to the
    stage's history.jsonl and its MLflow metrics."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        pass


def _peft_config(lora):
    if lora is None:
        return None
    from peft import LoraConfig

    return LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=lora.target_modules,
                      task_type="CAUSAL_LM")


def per_device_batch(prompts_per_step: int, num_generations: int, world_size: int) -> int:
    """Completions each of ``world_size`` processes trains on per step, so that one step covers
    ``prompts_per_step`` prompts in all, each with ``num_generations`` completions."""
    completions = prompts_per_step * num_generations
    if completions % world_size:
        raise ValueError(f"prompts_per_step × num_generations = {prompts_per_step} × {num_generations} = {completions} "
                         f"completions per step cannot be split evenly over {world_size} processes: choose "
                         f"prompts_per_step so that the product is a multiple of {world_size}")
    return completions // world_size


def grpo_trainer(job: GRPOJob, model, processor, rows: Sequence[dict], reward_funcs: list[Callable],
                 reward_weights: list[float] | None, callbacks: list) -> GRPOTrainer:
    """TRL's trainer for ``rows`` (each ``{"prompt", "image", ...}``), configured from the job."""
    from accelerate import PartialState
    from datasets import Dataset

    cuda, training = torch.cuda.is_available(), job.training
    batch = per_device_batch(job.prompts_per_step, job.num_generations, PartialState().num_processes)
    args = GRPOConfig(
        output_dir=job.work_dir, max_steps=job.steps, learning_rate=job.learning_rate,
        lr_scheduler_type=job.lr_scheduler, warmup_steps=job.warmup_steps, scale_rewards=job.scale_rewards,
        loss_type=job.loss_type, per_device_train_batch_size=batch, gradient_accumulation_steps=1,
        num_generations=job.num_generations, max_completion_length=job.max_new_tokens, temperature=job.temperature,
        top_k=0, top_p=1.0, beta=job.kl_beta, reward_weights=reward_weights, logging_steps=1,
        save_strategy="steps", save_steps=job.save_steps, save_only_model=False, report_to="none",
        seed=job.seed, data_seed=job.seed, use_cpu=not cuda, bf16=cuda, use_vllm=job.engine == "vllm",
        vllm_mode=training.vllm_mode, vllm_server_base_url=training.vllm_server_base_url,
        vllm_gpu_memory_utilization=training.vllm_gpu_memory_utilization,
        disable_tqdm=False, dataloader_num_workers=0,
    )
    if job.freeze_vision:
        freeze_vision_tower(model)
    trainer = GRPOTrainer(model=model, reward_funcs=reward_funcs, args=args, train_dataset=Dataset.from_list(list(rows)),
                          processing_class=processor, callbacks=callbacks, peft_config=_peft_config(training.lora))
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(_ProgressBar)
    return trainer


def freeze_vision_tower(model) -> int:
    """Stop gradients into the vision tower (Qwen2.5-VL's ``model.visual``); returns how many parameters."""
    frozen = 0
    for name, param in model.named_parameters():
        if ".visual." in f".{name}":
            param.requires_grad_(False)
            frozen += param.numel()
    if not frozen:
        raise ValueError("freeze_vision: this model has no vision tower named 'visual'")
    return frozen


def _reward_funcs(job: GRPOJob, pictures: dict) -> tuple[list[Callable], list[float] | None]:
    from .rewards import format_reward, make_questioner_reward_func, reasoner_accuracy_reward

    if job.role == "reasoner":
        w = job.method.reasoner_format_weight
        return [reasoner_accuracy_reward, format_reward], [1 - w, w]
    from .selfplay import make_scorer

    scorer = make_scorer(job.scorer, job.images_folder, pictures)
    return [make_questioner_reward_func(scorer.confidences, job.method)], None


def _rows(job: GRPOJob, pictures: dict) -> list[dict]:
    if job.role == "questioner":
        return [{"prompt": prompts.questioner_messages(), "image": pictures[r["image_id"]], "image_id": r["image_id"]}
                for r in job.rows]
    return [{"prompt": prompts.reasoner_messages(r["question"]), "image": pictures[r["image_id"]],
             "pseudo_label": r["pseudo_label"]} for r in job.rows]


def run_job(job: GRPOJob) -> GRPOResult:
    """Train, then save the updated model (float32, adapters merged), the trainer's log and the steps
    that ran."""
    model = load_model(job.model, job.trust_remote_code, dtype=torch.float32, device="cpu")  # the trainer places it
    processor = load_processor(job.model, job.trust_remote_code)
    output = Path(job.output)
    history = _History()
    trainer = None
    if job.rows and job.steps:
        pictures = load_images(job.images_folder, sorted({r["image_id"] for r in job.rows}))
        funcs, weights = _reward_funcs(job, pictures)
        trainer = grpo_trainer(job, model, processor, _rows(job, pictures), funcs, weights, [history])
        trainer.train(resume_from_checkpoint=last_complete_checkpoint(job.work_dir))
        model = trainer.accelerator.unwrap_model(trainer.model)
        if job.training.lora is not None:
            model = model.merge_and_unload()
    result = GRPOResult(steps=trainer.state.global_step if trainer else 0, history=history.rows)
    if trainer is None or trainer.accelerator.is_main_process:
        output.mkdir(parents=True, exist_ok=True)
        save_checkpoint(model, processor, output / "model")
        write_jsonl(output / "history.jsonl", history.rows)
        write_json(output / "steps.json", result.steps)
    return result


def launch(job: GRPOJob) -> GRPOResult:
    """Run ``job`` with its launcher; returns what it did, and warns when fewer steps ran than asked. A
    launched process that fails raises ``RuntimeError`` with the end of its log (the whole log is in the
    work folder)."""
    result = run_job(job) if job.training.launcher == "in-process" else _launch_process(job)
    if result.steps < job.steps:
        logging.getLogger("visplay").warning(
            f"GRPO {job.role}: {result.steps} of {job.steps} steps ran ({len(job.rows)} rows for "
            f"{job.prompts_per_step} prompts per step: a step needs a whole batch of prompts)")
    return result


def _launch_process(job: GRPOJob) -> GRPOResult:
    work = Path(job.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    spec = work / "job.json"
    spec.write_text(job.model_dump_json(indent=1))
    command = [sys.executable, "-m", "visplay_core.grpo", str(spec)]
    if job.training.launcher == "accelerate":
        config = ["--config_file", job.training.accelerate_config] if job.training.accelerate_config else []
        command = [sys.executable, "-m", "accelerate.commands.launch", *config, "-m", "visplay_core.grpo", str(spec)]
    log = work / "launch.log"
    with open(log, "ab") as out:
        code = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT).returncode
    if code != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"GRPO {job.role} job failed (exit {code}; {' '.join(command)}); full log: {log}\n{tail}")
    output = Path(job.output)
    return GRPOResult(steps=json.loads((output / "steps.json").read_text()), history=read_jsonl(output / "history.jsonl"))


def last_complete_checkpoint(work_dir: str | Path) -> str | None:
    """The newest trainer checkpoint whose state file is whole (the trainer writes it last), so a
    checkpoint cut short by a kill is never resumed from."""
    steps = sorted(Path(work_dir).glob("checkpoint-*"), key=lambda p: int(p.name.rsplit("-", 1)[1]), reverse=True)
    for checkpoint in steps:
        try:
            json.loads((checkpoint / "trainer_state.json").read_text())
            return str(checkpoint)
        except (OSError, ValueError):
            continue
    return None


if __name__ == "__main__":  # one rank of a launched job
    run_job(GRPOJob.model_validate_json(Path(sys.argv[1]).read_text()))
