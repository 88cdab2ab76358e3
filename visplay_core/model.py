"""Loading VLMs and building the tiny embedded one.

``load_model`` / ``load_processor`` open any local Hugging Face VLM checkpoint. Real checkpoints use
``AutoProcessor``; where that fails because torchvision is missing (the CPU torch used here has no
working torchvision) the image-only ``ImageOnlyQwen2_5_VLProcessor`` stands in, built on transformers'
PIL image processor.

``build_tiny_vlm`` makes the embedded base: a real ``Qwen2_5_VLForConditionalGeneration`` from a small
config, with a byte-level BPE tokenizer trained on the shapes world's language.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForImageTextToText,
    AutoProcessor,
    PreTrainedTokenizerFast,
    ProcessorMixin,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
)
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>", "<|video_pad|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TINY_PIXELS = 112 * 112  # the tiny model's pixel budget: 16 merged vision tokens per image


class ImageOnlyQwen2_5_VLProcessor(Qwen2_5_VLProcessor):
    """Qwen2.5-VL processor without the video processor, so it needs no torchvision.

    Load it by its class: ``AutoProcessor`` does not know it.
    """

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        self.image_token, self.video_token = "<|image_pad|>", "<|video_pad|>"
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)


def train_tokenizer(texts: list[str], vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on ``texts`` with Qwen's chat special tokens."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   padding_side="left", chat_template=CHAT_TEMPLATE)


def build_processor(tokenizer: PreTrainedTokenizerFast, max_pixels: int = TINY_PIXELS) -> ImageOnlyQwen2_5_VLProcessor:
    image_processor = Qwen2VLImageProcessorPil(size={"shortest_edge": 56 * 56, "longest_edge": max_pixels})
    return ImageOnlyQwen2_5_VLProcessor(image_processor, tokenizer, chat_template=CHAT_TEMPLATE)


def tiny_config(tokenizer: PreTrainedTokenizerFast, hidden: int = 128, layers: int = 4) -> Qwen2_5_VLConfig:
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    text = dict(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=3 * hidden,
                num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                max_position_embeddings=1024, tie_word_embeddings=True,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 6, 6]},
                bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
    vision = dict(depth=2, hidden_size=128, intermediate_size=256, num_heads=4, out_hidden_size=hidden,
                  patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                  fullatt_block_indexes=[0, 1])
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=True,
                            image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                            vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])


def build_tiny_vlm(texts: list[str], seed: int = 0) -> tuple[Qwen2_5_VLForConditionalGeneration, ProcessorMixin]:
    """A freshly initialised tiny Qwen2.5-VL and its processor, with a tokenizer trained on ``texts``."""
    tokenizer = train_tokenizer(texts)
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(tiny_config(tokenizer))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model, build_processor(tokenizer)


def add_tokens(model, processor: ProcessorMixin, tokens: tuple[str, ...]) -> list[str]:
    """Make each of ``tokens`` one (non-special) token of the vocabulary, growing the model's embeddings
    for those it lacks; returns the tokens added. Byte-level BPE trained on a small corpus splits rare words
    into characters, so a word that must be chosen by one sampled token (a route's opener) is added whole."""
    vocab = processor.tokenizer.get_vocab()
    missing = [t for t in tokens if t not in vocab]
    if missing:
        processor.tokenizer.add_tokens(missing)
        model.resize_token_embeddings(len(processor.tokenizer))
    return missing


def load_processor(path: str | Path, trust_remote_code: bool = False) -> ProcessorMixin:
    """The checkpoint's processor (the image-only one where ``AutoProcessor`` cannot be built), padding on
    the left: batched generation continues each prompt from its last token, whatever the checkpoint's
    tokenizer says (Qwen2.5-VL's own pads on the right)."""
    config = json.loads((Path(path) / "processor_config.json").read_text()) if (Path(path) / "processor_config.json").exists() else {}
    processor = None
    if config.get("processor_class") != ImageOnlyQwen2_5_VLProcessor.__name__:
        try:
            processor = AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
        except (AttributeError, ImportError, OSError, RuntimeError):  # no usable torchvision, no video config
            pass
    if processor is None:
        processor = ImageOnlyQwen2_5_VLProcessor.from_pretrained(path)
    processor.tokenizer.padding_side = "left"
    return processor


def load_model(path: str | Path, trust_remote_code: bool = False, dtype: torch.dtype | str = "auto",
               device: str | None = None):
    """Any image-text-to-text checkpoint by local path, in eval mode, in its saved dtype unless ``dtype``
    says otherwise (training loads float32: see ``visplay_core.grpo``), on ``device``: by default this
    process's GPU when there is one (``LOCAL_RANK`` under a launcher), else the CPU."""
    model = AutoModelForImageTextToText.from_pretrained(path, trust_remote_code=trust_remote_code, dtype=dtype)
    gpu = f"cuda:{os.environ.get('LOCAL_RANK', 0)}" if torch.cuda.is_available() else "cpu"
    return model.to(device or gpu).eval()


def save_checkpoint(model, processor: ProcessorMixin, path: str | Path) -> None:
    """Save model (safetensors) and processor into ``path`` (the caller makes it atomic)."""
    model.save_pretrained(path, safe_serialization=True)
    processor.save_pretrained(path)
