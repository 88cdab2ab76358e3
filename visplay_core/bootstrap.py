"""Bootstrap: a short, seeded supervised training that turns a fresh tiny VLM into a base that sees.

It learns both roles from the same prompts self-play will use: as Reasoner it lists the objects the
question refers to (with grid positions, in a scan order drawn per example: several routes to one
answer) and then boxes the answer, on questions whose answers are balanced the way ShapesBench's are; as Questioner it writes one valid question
about the image. Describing first is what makes a small model read the image at all (a mixed
question-only curriculum learns question priors and lets the vision gradient vanish; see NOTES).
Image use is measured while training: the completion loss with true images vs with shuffled ones.

A share g of the Reasoner's examples (``glance_share``) answers at a glance instead: "glance: \\boxed{h}"
with h from ``world.glance_answer``, a deterministic, superficial reading that is often wrong. This models
what instruction-tuned VLMs do (a short question answered at once under greedy decoding, sampled answers
that sometimes reason) so that greedy decoding and a vote of samples part: with g above each of the four
openers' share (1 − g) / 4 and below their total, the greedy completion glances while most samples
reason. That gap (the headroom) is what majority-vote self-play can distill; with g = 0 there is none.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from . import bench, prompts, world
from .evaluate import evaluate_shapes
from .io import atomic_dir, write_json
from .rewards import UNANSWERABLE
from .model import add_tokens, build_tiny_vlm, load_model, load_processor, save_checkpoint


@dataclass(frozen=True)
class BootstrapConfig:
    steps: int = 4000
    batch_size: int = 32
    lr: float = 1e-3
    warmup: int = 50
    questioner_share: float = 0.2
    caption_share: float = 0.3
    emphasis: float = 5.0
    seed: int = 0
    probe_every: int = 100
    eval_every: int = 500
    eval_limit: int = 120
    final_votes: int = 10  # the final evaluation also samples this many answers per item (headroom)
    final_limit: int | None = None  # items of the final evaluation (all 1,200 when None)
    threads: int = 2
    init: str | None = None  # continue from this checkpoint instead of a fresh model (the capacity control)
    unanswerable_share: float = 0.1  # reasoner examples on a question that does not apply, answered "none"
    routes: bool = True  # reasoning in a random scan order per example (False: raster order only)
    balanced: bool = True  # reasoner questions with answers balanced as ShapesBench's (False: as drawn)
    # g: the share of Reasoner examples answered at a glance ("glance: \boxed{h}", h from
    # world.glance_answer, a superficial reading of image and question) instead of by a reasoned chain.
    # With g above any one opener's share, (1 - g) / 4, and below the chains' total, greedy decoding
    # glances while a vote of samples goes with the reasoning: the headroom self-play can distill.
    glance_share: float = 0.35


def example(rng: random.Random, questioner_share: float, caption_share: float = 0.0, routes: bool = True,
            balanced: bool = True, unanswerable_share: float = 0.0, glance_share: float = 0.0):
    """One training example: (image, chat messages, target completion, final answer or None).

    Three tasks: the Questioner's (one valid question about the image), the Reasoner's and an auxiliary
    caption of the whole scene, which keeps the vision tower learning from every object of every image.
    The Reasoner's completion is, with share ``glance_share``, a glance (``world.GLANCE`` then the boxed
    ``world.glance_answer``), else grounded reasoning opened by its scan order (``world.OPENERS``), then
    the boxed true answer (``UNANSWERABLE`` for a question that does not apply to the scene)."""
    scene = world.random_scene(rng)
    image = world.render(scene, seed=rng.randrange(2**31))
    draw = rng.random()
    if draw < questioner_share:
        question, _, _ = world.sample_question(scene, rng)
        return image, prompts.questioner_messages(), prompts.format_question(question), None
    if draw < questioner_share + caption_share:
        return image, prompts.caption_messages(), world.describe(scene), None
    invalid = world.sample_invalid_question(scene, rng) if rng.random() < unanswerable_share else None
    question, answer = (invalid, UNANSWERABLE) if invalid else bench.training_question(scene, rng, balanced)[:2]
    if not invalid and rng.random() < glance_share:
        glance = world.glance_answer(scene, question)
        return image, prompts.reasoner_messages(question), prompts.format_answer(world.GLANCE, glance), glance
    chain = world.reasoning(scene, question, rng.choice(list(world.SCAN_ORDERS)) if routes else "rows")
    return image, prompts.reasoner_messages(question), prompts.format_answer(chain, answer), answer


def world_texts(n: int, seed: int) -> list[str]:
    """The world's language (prompts, questions, descriptions, answers), to train the tokenizer on."""
    rng = random.Random(seed)
    texts = [prompts.QUESTIONER_INSTRUCTION, prompts.CAPTION_INSTRUCTION]
    for _ in range(n):
        image, messages, target, _ = example(rng, 0.3, 0.2, glance_share=0.3)
        texts += [messages[0]["content"][1]["text"], target]
    return texts


def collate(processor, batch):
    """Model inputs with labels on the completion tokens and the closing ``<|im_end|>`` only."""
    images, conversations, targets = list(zip(*batch))[:3]
    end = "<|im_end|>"
    prompts_text = [processor.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in conversations]
    enc = processor(text=[p + t + end for p, t in zip(prompts_text, targets)], images=list(images),
                    return_tensors="pt", padding=True)
    labels = torch.full_like(enc["input_ids"], -100)
    for row, target in enumerate(targets):
        n = len(processor.tokenizer(target + end, add_special_tokens=False)["input_ids"])
        labels[row, -n:] = enc["input_ids"][row, -n:]
    enc["labels"] = labels
    return enc


def completion_loss(model, processor, batch, emphasis: float = 1.0) -> torch.Tensor:
    """Mean cross-entropy over completion tokens, with the tokens that need the image or the reasoning
    (color and shape words, the final answer) weighted ``emphasis`` times. Without the emphasis, a small
    model learns positions and sizes from the image but leaves color and shape at chance."""
    enc = collate(processor, batch)
    labels = enc.pop("labels")[:, 1:]
    logits = model(**enc).logits[:, :-1]
    ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, reduction="none")
    weights = (labels != -100).float()
    if emphasis != 1.0:
        weights = torch.where(torch.isin(labels, _attribute_ids(processor.tokenizer)), weights * emphasis, weights)
        for row, item in enumerate(batch):
            if item[3] is not None:
                n = len(processor.tokenizer(f"{item[3]}}}<|im_end|>", add_special_tokens=False)["input_ids"])
                weights[row, -n:] *= emphasis
    return (ce * weights).sum() / weights.sum()


def _attribute_ids(tokenizer) -> torch.Tensor:
    words = world.COLORS + world.SHAPES
    ids = {tokenizer.convert_tokens_to_ids(t) for w in words for t in (w, "Ġ" + w)}
    return torch.tensor(sorted(i for i in ids if i is not None and i != tokenizer.unk_token_id))


def _lr_factor(step: int, cfg: BootstrapConfig) -> float:
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))


@torch.no_grad()
def image_use_probe(model, processor, probe) -> tuple[float, float]:
    """Completion loss on a fixed batch with its true images and with the images rotated by one."""
    model.eval()
    true_loss = completion_loss(model, processor, probe).item()
    rotated = [(probe[(i + 1) % len(probe)][0],) + tuple(probe[i][1:]) for i in range(len(probe))]
    shuffled_loss = completion_loss(model, processor, rotated).item()
    model.train()
    return true_loss, shuffled_loss


def bootstrap(output: str | Path, cfg: BootstrapConfig = BootstrapConfig(), progress: bool = True) -> dict:
    """Train the tiny base from scratch and save it (atomically) to ``output``; returns its log."""
    torch.set_num_threads(cfg.threads)
    random.seed(cfg.seed)
    if cfg.init:
        model, processor = load_model(cfg.init, dtype=torch.float32).train(), load_processor(cfg.init)
    else:
        model, processor = build_tiny_vlm(world_texts(4000, cfg.seed), seed=cfg.seed)
    add_tokens(model, processor, world.ROUTE_TOKENS)
    rng = random.Random(cfg.seed + 1)
    probe = [example(random.Random(10_000 + i), cfg.questioner_share, cfg.caption_share) for i in range(64)]
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.98), weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, cfg))
    log: dict = {"config": cfg.__dict__, "probes": [], "evals": []}
    start = time.time()
    model.train()
    bar = tqdm(range(cfg.steps), desc="bootstrap", disable=not progress)
    for step in bar:
        batch = [example(rng, cfg.questioner_share, cfg.caption_share, cfg.routes, cfg.balanced, cfg.unanswerable_share,
                         cfg.glance_share) for _ in range(cfg.batch_size)]
        loss = completion_loss(model, processor, batch, cfg.emphasis)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if (step + 1) % cfg.probe_every == 0:
            true_loss, shuffled_loss = image_use_probe(model, processor, probe)
            log["probes"].append({"step": step + 1, "loss": true_loss, "shuffled_loss": shuffled_loss})
            bar.set_postfix(loss=f"{true_loss:.3f}", shuffled=f"{shuffled_loss:.3f}")
        if cfg.eval_every and (step + 1) % cfg.eval_every == 0 and step + 1 < cfg.steps:
            model.eval()
            scores = evaluate_shapes(model, processor, limit=cfg.eval_limit)
            model.train()
            log["evals"].append({"step": step + 1, **_brief(scores)})
            tqdm.write(f"step {step + 1}: {_brief(scores)}")
    model.eval()
    log["final"] = evaluate_shapes(model, processor, limit=cfg.final_limit, votes=cfg.final_votes)
    log["seconds"] = time.time() - start
    with atomic_dir(output) as tmp:
        save_checkpoint(model, processor, tmp)
        write_json(tmp / "bootstrap_log.json", log)
    return log


def _brief(scores: dict) -> dict:
    return {"accuracy": round(scores["accuracy"], 3), "shuffled": round(scores["shuffled_image_accuracy"], 3),
            **{k: round(v["accuracy"], 2) for k, v in scores["per_kind"].items()}}
