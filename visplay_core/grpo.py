"""GRPO updates of either role with TRL's ``GRPOTrainer``.

The trainer saves checkpoints every ``save_steps`` into its work folder and resumes from the last one,
so an interrupted GRPO stage continues where it stopped.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Sequence

import torch
from datasets import Dataset
from transformers import TrainerCallback
from trl import GRPOConfig, GRPOTrainer


class _History(TrainerCallback):
    def __init__(self):
        self.rows: list[dict] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs:
            self.rows.append({"step": state.global_step, **{k: v for k, v in logs.items() if isinstance(v, (int, float))}})


def grpo_train(model, processor, rows: Sequence[dict], reward_funcs: list[Callable], *, work_dir: str | Path,
               steps: int, learning_rate: float, prompts_per_step: int, num_generations: int, temperature: float,
               max_new_tokens: int, save_steps: int, kl_beta: float, seed: int,
               reward_weights: list[float] | None = None, use_vllm: bool = False) -> list[dict]:
    """Train ``model`` in place for ``steps`` GRPO steps on ``rows`` (each ``{"prompt", "image", ...}``);
    returns the trainer's log history (reward curves)."""
    cuda = torch.cuda.is_available()
    args = GRPOConfig(
        output_dir=str(work_dir), max_steps=steps, learning_rate=learning_rate, lr_scheduler_type="constant",
        per_device_train_batch_size=prompts_per_step * num_generations, gradient_accumulation_steps=1,
        num_generations=num_generations, max_completion_length=max_new_tokens, temperature=temperature,
        top_k=0, top_p=1.0, beta=kl_beta, reward_weights=reward_weights, logging_steps=1,
        save_strategy="steps", save_steps=save_steps, save_only_model=False, report_to="none",
        seed=seed, data_seed=seed, use_cpu=not cuda, bf16=cuda, use_vllm=use_vllm, vllm_mode="colocate",
        disable_tqdm=False, dataloader_num_workers=0,
    )
    history = _History()
    trainer = GRPOTrainer(model=model, reward_funcs=reward_funcs, args=args, train_dataset=Dataset.from_list(list(rows)),
                          processing_class=processor, callbacks=[history])
    trainer.train(resume_from_checkpoint=last_complete_checkpoint(work_dir))
    return history.rows


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
