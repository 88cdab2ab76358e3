"""Batched generation: Hugging Face ``generate`` (the ``hf`` engine) or vLLM's offline engine (``vllm``).

n samples of one prompt share one prefill (``num_return_sequences`` / vLLM's ``n``); prompts are
processed in batches. Both engines answer ``generate(images, conversations, n=..., ...)``.
"""

from __future__ import annotations

from typing import Sequence

import torch
from PIL import Image

from .progress import progress_bar


def chat_texts(processor, conversations: Sequence[list[dict]]) -> list[str]:
    return [processor.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in conversations]


@torch.inference_mode()
def generate(model, processor, images: Sequence[Image.Image], conversations: Sequence[list[dict]], *,
             n: int = 1, temperature: float = 1.0, max_new_tokens: int = 48, batch_size: int = 32,
             seed: int | None = None, with_entropy: bool = False):
    """``n`` completions for each (image, conversation); greedy when ``temperature`` is 0.

    An entry of ``images`` may also be a list of images (several, or none for a text-only prompt), one
    per ``{"type": "image"}`` in its conversation. With ``with_entropy`` it returns ``(completions,
    entropies)``: beside each completion the mean entropy (nats) of the distribution its tokens were
    drawn from (after temperature), over its tokens up to and including the end of sequence (padding after it left out).
    """
    if len(images) != len(conversations):
        raise ValueError(f"{len(images)} images for {len(conversations)} prompts")
    if seed is not None:
        torch.manual_seed(seed)
    texts = chat_texts(processor, conversations)
    sampling = temperature > 0
    options = dict(do_sample=sampling, max_new_tokens=max_new_tokens, num_return_sequences=n,
                   pad_token_id=processor.tokenizer.pad_token_id)
    if sampling:
        options.update(temperature=temperature, top_k=0, top_p=1.0)
    if with_entropy:
        options.update(output_scores=True, return_dict_in_generate=True)
    results: list[list[str]] = []
    entropies: list[list[float]] = []
    per_batch = max(1, batch_size // n)
    bar = progress_bar(len(texts))
    for start in range(0, len(texts), per_batch):
        batch_images = list(images[start:start + per_batch])
        if all(isinstance(i, (list, tuple)) and not i for i in batch_images):
            batch_images = None  # a batch of text-only prompts: the processor wants no images at all
        batch = processor(text=texts[start:start + per_batch], images=batch_images,
                          return_tensors="pt", padding=True).to(model.device)
        out = model.generate(**batch, **options)
        sequences = out.sequences if with_entropy else out
        new_tokens = sequences[:, batch["input_ids"].shape[1]:]
        decoded = processor.batch_decode(new_tokens, skip_special_tokens=True)
        results.extend(decoded[i:i + n] for i in range(0, len(decoded), n))
        if bar is not None:
            bar.update(len(texts[start:start + per_batch]))
        if with_entropy:
            means = mean_token_entropy(torch.stack(out.scores, dim=1), new_tokens, processor.tokenizer.pad_token_id)
            entropies.extend(means[i:i + n] for i in range(0, len(means), n))
    return (results, entropies) if with_entropy else results


def mean_token_entropy(scores: torch.Tensor, tokens: torch.Tensor, pad_token_id: int) -> list[float]:
    """Per sequence, the mean entropy of the softmax of ``scores`` (batch × steps × vocab: the logits each
    token was drawn from) over its generated tokens; the padding after a finished sequence is left out."""
    logp = torch.log_softmax(scores.float(), dim=-1)
    entropy = -(logp.exp() * torch.nan_to_num(logp, neginf=0.0)).sum(-1)
    mask = (torch.cumsum(tokens == pad_token_id, dim=1) == 0).float()  # the padding after the end is out
    return ((entropy * mask).sum(1) / mask.sum(1).clamp(min=1)).tolist()


def make_engine(path: str, engine: str = "hf", trust_remote_code: bool = False, seed: int = 0):
    """The generation engine ``engine`` ("hf" or "vllm") over the checkpoint at ``path``."""
    from .model import load_model, load_processor

    processor = load_processor(path, trust_remote_code)
    if engine == "vllm":
        return VLLMEngine(path, processor, seed=seed)
    return HFEngine(load_model(path, trust_remote_code), processor)


class HFEngine:
    """Generation with an in-memory transformers model."""

    def __init__(self, model, processor, batch_size: int = 32):
        self.model, self.processor, self.batch_size = model, processor, batch_size

    def generate(self, images, conversations, **options) -> list[list[str]]:
        return generate(self.model, self.processor, images, conversations, batch_size=self.batch_size, **options)


class VLLMEngine:
    """Generation with vLLM's offline ``LLM`` (GPU only; ``pip install visplay[vllm]``)."""

    def __init__(self, path: str, processor, gpu_memory_utilization: float = 0.4, seed: int = 0):
        try:
            from vllm import LLM
        except ImportError as e:
            raise RuntimeError("engine 'vllm' needs vLLM: pip install 'visplay[vllm]' (a CUDA machine)") from e
        self.processor = processor
        self.llm = LLM(model=str(path), gpu_memory_utilization=gpu_memory_utilization, seed=seed,
                       limit_mm_per_prompt={"image": 1})

    def generate(self, images, conversations, *, n: int = 1, temperature: float = 1.0, max_new_tokens: int = 48,
                 seed: int | None = None) -> list[list[str]]:
        from vllm import SamplingParams

        params = SamplingParams(n=n, temperature=temperature, max_tokens=max_new_tokens, seed=seed)
        requests = [{"prompt": text, "multi_modal_data": {"image": image}}
                    for text, image in zip(chat_texts(self.processor, conversations), images)]
        return [[o.text for o in out.outputs] for out in self.llm.generate(requests, params, use_tqdm=False)]
