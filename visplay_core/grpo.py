"""GRPO updates of either role with TRL's ``GRPOTrainer``, described as data so they can run anywhere.

A ``GRPOJob`` holds everything one update needs (the checkpoint to start from, the rows as image ids
and questions, the role's settings, how the Questioner's reward gets its votes). ``launch`` runs it in
this process (the embedded default), in a fresh Python process (one GPU: the stage's memory is freed
when it ends), or under ``accelerate launch`` with a given config (several GPUs, DeepSpeed ZeRO): every
rank runs ``python -m visplay_core.grpo JOB.json`` and the main one saves the result.

The trainer saves checkpoints every ``save_steps`` into the job's work folder and resumes from the last
complete one, so an interrupted GRPO stage continues where it stopped and ends as an uninterrupted one
would (``resume_point``; with vLLM rollouts it starts again from its first step instead).

Precision: the model trains in float32 whatever dtype it was saved in (master weights; on CUDA the
forward and backward run under bf16 autocast), and is saved in float32: AdamW steps of the paper's
1e-6 are below bf16's resolution near typical weights, and would vanish in bf16 weights.

``prompts_per_step`` counts prompts across all processes: each of W processes trains on
``prompts_per_step × num_generations / W`` completions per step (``per_device_batch``).
"""

from __future__ import annotations

import functools
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Callable, Literal, Sequence

import torch
import yaml
from pydantic import BaseModel, Field
from transformers import ProgressCallback
from trl import GRPOConfig, GRPOTrainer
from trl.trainer.utils import RepeatSampler

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


def step_log(log_history: list[dict]) -> list[dict]:
    """The numbers the trainer logged at each step (its ``state.log_history``, which a checkpoint keeps, so a
    resumed stage's log is whole), without the end-of-training summary: its speeds are wall-clock and its
    ``train_loss`` averages only the steps since the last resume."""
    return [{k: v for k, v in row.items() if isinstance(v, (int, float))} for row in log_history
            if "train_runtime" not in row]


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


class _EpochSampler(RepeatSampler):
    """TRL's sampler with its shuffle seeded by ``seed + epoch`` (the trainer announces each epoch through
    ``set_epoch``). TRL's own draws every epoch's order from one generator, so a run resumed at the start
    of epoch e > 0 replayed epoch 0's order."""

    def set_epoch(self, epoch: int) -> None:
        if self.shuffle:
            self.generator.manual_seed(self.seed + epoch)


class _ResumingTrainer(GRPOTrainer):
    """TRL's trainer, resuming a checkpoint's weights as ``from_pretrained`` reads them. transformers 5's
    ``save_pretrained`` writes a VLM's weights under their original names (Qwen2.5-VL: ``model.layers.*``,
    ``visual.*``), but its ``Trainer`` resumes them with a plain ``load_state_dict(strict=False)``: every key
    misses, with only a warning, and the resumed stage goes on from its starting weights (transformers
    issue 43701)."""

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        model = self.model if model is None else model
        if self.is_fsdp_enabled or not (Path(resume_from_checkpoint) / "config.json").exists():  # LoRA: adapters
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        saved = type(model).from_pretrained(resume_from_checkpoint, dtype=model.dtype)
        model.load_state_dict(saved.state_dict())  # strict: a name that does not match fails here

    def _get_train_sampler(self, dataset=None) -> _EpochSampler:
        sampler = super()._get_train_sampler(dataset)
        sampler.__class__ = _EpochSampler  # the sampler as TRL builds it, plus set_epoch
        return sampler


def grpo_trainer(job: GRPOJob, model, processor, rows: Sequence[dict], reward_funcs: list[Callable],
                 reward_weights: list[float] | None) -> GRPOTrainer:
    """TRL's trainer for ``rows`` (each ``{"prompt", "image", ...}``), configured from the job."""
    from accelerate import PartialState
    from datasets import Dataset

    cuda, training = torch.cuda.is_available(), job.training
    # cpu=True: ranks without a GPU join a gloo group (a plain PartialState() on CPU sees one process).
    batch = per_device_batch(job.prompts_per_step, job.num_generations, PartialState(cpu=not cuda).num_processes)
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
    trainer = _ResumingTrainer(model=model, reward_funcs=reward_funcs, args=args,
                               train_dataset=Dataset.from_list(list(rows)), processing_class=processor,
                               peft_config=_peft_config(training.lora))
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
    from .rewards import make_questioner_reward_func, reasoner_reward_funcs

    if job.role == "reasoner":
        return reasoner_reward_funcs(job.method)
    from .selfplay import make_scorer

    scorer = make_scorer(job.scorer, job.images_folder, pictures)
    return [make_questioner_reward_func(scorer.confidences, job.method)], None


def _counted(func: Callable, scored: list[int]) -> Callable:
    """``func``, noting how many completions each call scores: this process's share of the step's batch."""
    @functools.wraps(func)  # TRL logs a reward by its function's name
    def counted(*args, completions: list, **kwargs) -> list[float]:
        scored.append(len(completions))
        return func(*args, completions=completions, **kwargs)

    return counted


def _rows(job: GRPOJob, pictures: dict) -> list[dict]:
    if job.role == "questioner":
        return [{"prompt": prompts.questioner_messages(), "image": pictures[r["image_id"]], "image_id": r["image_id"]}
                for r in job.rows]
    return [{"prompt": prompts.reasoner_messages(r["question"]), "image": pictures[r["image_id"]],
             "pseudo_label": r["pseudo_label"]} for r in job.rows]


def run_job(job: GRPOJob) -> GRPOResult:
    """Train, then save the updated model (float32, adapters merged), the trainer's log and the steps
    that ran; every process also writes ``output``/ranks/<rank>.json: the world size and the completions
    it scored at each step."""
    from accelerate import PartialState

    model = load_model(job.model, job.trust_remote_code, dtype=torch.float32, device="cpu")  # the trainer places it
    processor = load_processor(job.model, job.trust_remote_code)
    output = Path(job.output)
    trainer, scored, history = None, [], []
    if job.rows and job.steps:
        pictures = load_images(job.images_folder, sorted({r["image_id"] for r in job.rows}))
        funcs, weights = _reward_funcs(job, pictures)
        funcs[0] = _counted(funcs[0], scored)
        trainer = grpo_trainer(job, model, processor, _rows(job, pictures), funcs, weights)
        trainer.train(resume_from_checkpoint=resume_point(job))
        history = step_log(trainer.state.log_history)
        model = trainer.accelerator.unwrap_model(trainer.model)
        if job.training.lora is not None:
            model = model.merge_and_unload()
    result = GRPOResult(steps=trainer.state.global_step if trainer else 0, history=history)
    state = trainer.accelerator if trainer else PartialState(cpu=not torch.cuda.is_available())
    write_json(output / "ranks" / f"{state.process_index}.json", {"world_size": state.num_processes, "scored": scored})
    if state.is_main_process:  # one writer, also when there was nothing to train
        output.mkdir(parents=True, exist_ok=True)
        save_checkpoint(model, processor, output / "model")
        write_jsonl(output / "history.jsonl", history)
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
        if job.training.accelerate_config:
            check_accelerate_config(job.training.accelerate_config)
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


def check_accelerate_config(path: str | Path) -> None:
    """Refuse an accelerate config that would train in one process while asking for several:
    ``distributed_type: MULTI_CPU`` starts its other processes only through mpirun (``mpirun_config``)."""
    settings = yaml.safe_load(Path(path).read_text()) or {}
    if (settings.get("distributed_type") == "MULTI_CPU" and settings.get("num_processes", 1) > 1
            and not (settings.get("mpirun_config") or {}).get("mpirun_hostfile")):
        raise ValueError(f"{path}: distributed_type MULTI_CPU without mpirun_config.mpirun_hostfile: accelerate "
                         f"launch would start one process, not {settings['num_processes']}; for CPU processes "
                         "started by torchrun, see deployments/accelerate/cpu-2proc.yaml (MULTI_GPU)")


def resume_point(job: GRPOJob) -> str | None:
    """The trainer checkpoint the job resumes from: the last complete one, where resuming reproduces the
    uninterrupted run (the trainer's checkpoint holds its weights, optimizer, data order, step and random
    generators, and the Questioner's scorer draws by step). With vLLM rollouts it cannot: the vLLM
    engine's sampling state is not in the checkpoint, so the stage starts again from its first step and
    the log says so."""
    checkpoint, log = last_complete_checkpoint(job.work_dir), logging.getLogger("visplay")
    if checkpoint is not None and job.engine == "vllm":
        log.warning(f"GRPO {job.role}: not resuming from {checkpoint}: vLLM's sampling state is not in the "
                    "trainer's checkpoint, so a resumed stage would not equal an uninterrupted one; restarting "
                    "it from step 0")
        return None
    if checkpoint is not None:
        log.info(f"GRPO {job.role}: resuming from {checkpoint}")
    return checkpoint


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
