"""The tiny embedded Qwen2.5-VL: tokenizer, chat template, torchvision-free processor, save/load, collate."""

import importlib.util
import random

import pytest
import torch
from PIL import Image

from visplay_core import prompts, world
from visplay_core.bootstrap import collate, world_texts
from visplay_core.model import (
    SPECIAL_TOKENS,
    ImageOnlyQwen2_5_VLProcessor,
    build_tiny_vlm,
    load_model,
    load_processor,
    save_checkpoint,
)

IMAGE_PAD, IM_END = "<|image_pad|>", "<|im_end|>"


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model, processor = build_tiny_vlm(world_texts(200, 0), seed=0)
    return model.eval(), processor


@pytest.fixture(scope="module")
def saved(tiny, tmp_path_factory):
    model, processor = tiny
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    save_checkpoint(model, processor, path)
    return path


def _image(seed=0, size=112):
    scene = world.random_scene(random.Random(seed))
    image = world.render(scene, seed=seed)
    return image if size == 112 else image.resize((size, size))


def _batch():
    """A Questioner and a Reasoner example of different lengths (so the batch is padded)."""
    return [
        (_image(1), prompts.questioner_messages(), prompts.format_question("Is there a red circle?")),
        (_image(2), prompts.reasoner_messages("How many circles are there?"),
         prompts.format_answer("small red circle at 1,1; large blue square at 2,3.", "1")),
    ]


def test_tokenizer_has_the_chat_special_tokens(tiny):
    tok = tiny[1].tokenizer
    ids = [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS]
    assert len(set(ids)) == len(SPECIAL_TOKENS)
    assert tok.unk_token_id not in ids or tok.unk_token_id is None
    for token, token_id in zip(SPECIAL_TOKENS, ids):
        # Each special token is one id, never split by BPE, and decodes back to itself.
        assert tok(token, add_special_tokens=False)["input_ids"] == [token_id]
        assert tok.decode([token_id]) == token
    assert tok.eos_token == IM_END and tok.pad_token == "<|endoftext|>"
    assert tok.padding_side == "left"
    assert len(tok) <= 512
    text = "How many red circles are there?"
    assert tok.decode(tok(text)["input_ids"]) == text  # byte-level BPE round trip


def test_chat_template_renders_the_image_placeholder(tiny):
    processor = tiny[1]
    text = processor.apply_chat_template(prompts.reasoner_messages("What color is the circle?"),
                                         add_generation_prompt=True, tokenize=False)
    assert text == (
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What color is the circle?\n"
        "Describe what you see, then put the final answer in \\boxed{}.<|im_end|>\n<|im_start|>assistant\n"
    )
    plain = processor.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert plain == "<|im_start|>user\nhi<|im_end|>\n"


def test_torchvision_is_not_needed(tiny):
    if importlib.util.find_spec("torchvision") is None:
        with pytest.raises(ImportError):
            import torchvision  # noqa: F401
    assert isinstance(tiny[1], ImageOnlyQwen2_5_VLProcessor)
    assert getattr(tiny[1], "video_processor", None) is None


def test_processor_outputs_for_a_112px_image(tiny):
    processor = tiny[1]
    text = processor.apply_chat_template(prompts.questioner_messages(), add_generation_prompt=True, tokenize=False)
    enc = processor(text=[text], images=[_image()], return_tensors="pt")
    assert set(enc) >= {"input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids"}
    assert enc["image_grid_thw"].tolist() == [[1, 8, 8]]  # 112 / 14 = 8 patches a side
    assert tuple(enc["pixel_values"].shape) == (64, 3 * 2 * 14 * 14)  # 64 patches of 2 frames of 14×14×3
    pad_id = processor.tokenizer.convert_tokens_to_ids(IMAGE_PAD)
    is_pad = enc["input_ids"][0] == pad_id
    assert int(is_pad.sum()) == 16  # 8×8 patches merged 2×2
    # The 16 pads are contiguous, between <|vision_start|> and <|vision_end|>.
    positions = is_pad.nonzero().flatten().tolist()
    assert positions == list(range(positions[0], positions[0] + 16))
    ids = enc["input_ids"][0].tolist()
    assert processor.tokenizer.convert_ids_to_tokens([ids[positions[0] - 1], ids[positions[-1] + 1]]) == [
        "<|vision_start|>", "<|vision_end|>"]
    # mm_token_type_ids marks exactly the image tokens (the model needs it for its 3D positions).
    assert enc["mm_token_type_ids"][0].tolist() == is_pad.long().tolist()


def test_processor_keeps_the_pixel_budget(tiny):
    processor = tiny[1]
    text = "<|vision_start|><|image_pad|><|vision_end|>x"
    big = processor(text=[text], images=[_image(size=448)], return_tensors="pt")
    assert big["image_grid_thw"].tolist() == [[1, 8, 8]]  # downscaled to 112×112 pixels
    small = processor(text=[text], images=[Image.new("RGB", (56, 56), (255, 0, 0))], return_tensors="pt")
    assert small["image_grid_thw"].tolist() == [[1, 4, 4]]
    pad_id = processor.tokenizer.convert_tokens_to_ids(IMAGE_PAD)
    assert int((small["input_ids"] == pad_id).sum()) == 4


def test_model_forward_shapes(tiny):
    model, processor = tiny
    enc = collate(processor, _batch())
    with torch.no_grad():
        out = model(**enc)
    assert tuple(out.logits.shape) == (*enc["input_ids"].shape, model.config.text_config.vocab_size)
    assert torch.isfinite(out.loss)
    assert 5.0 < out.loss.item() < 7.5  # fresh init: near ln(vocab) = ln(512) ≈ 6.2
    assert sum(p.numel() for p in model.parameters()) < 5_000_000


def test_build_is_deterministic(tiny):
    model, _ = tiny
    again, _ = build_tiny_vlm(world_texts(200, 0), seed=0)
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name
    other, _ = build_tiny_vlm(world_texts(200, 0), seed=1)
    assert not torch.equal(model.lm_head.weight, other.lm_head.weight)


def test_collate_labels_only_the_completion(tiny):
    processor = tiny[1]
    batch = _batch()
    enc = collate(processor, batch)
    tok = processor.tokenizer
    ids, labels, mask = enc["input_ids"], enc["labels"], enc["attention_mask"]
    assert ids.shape == labels.shape
    assert (mask == 0).any()  # the shorter row is padded ...
    assert (mask[:, -1] == 1).all()  # ... on the left
    for row, (_, messages, target) in enumerate(batch):
        labelled = labels[row] != -100
        n = int(labelled.sum())
        # The labelled tokens are one contiguous block at the end, copied from the input ids.
        assert labelled[-n:].all() and not labelled[:-n].any()
        assert torch.equal(labels[row, -n:], ids[row, -n:])
        assert tok.decode(labels[row, -n:].tolist()) == target + IM_END
        # Everything before the block is the padded prompt, ending where the assistant turn starts.
        prompt = tok.decode(ids[row, :-n][mask[row, :-n] == 1].tolist())
        template = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        assert prompt == template.replace(IMAGE_PAD, IMAGE_PAD * 16)  # the pad expands to 16 vision tokens
        assert prompt.endswith("<|im_start|>assistant\n")
    # No image pad or padding token is ever a label.
    pad_ids = {tok.convert_tokens_to_ids(IMAGE_PAD), tok.pad_token_id}
    assert not any(t in pad_ids for t in labels[labels != -100].tolist())


def test_save_load_round_trip(tiny, saved):
    model, processor = tiny
    loaded_model, loaded_processor = load_model(saved), load_processor(saved)
    assert isinstance(loaded_processor, ImageOnlyQwen2_5_VLProcessor)
    assert not loaded_model.training
    assert loaded_model.dtype == torch.float32
    assert loaded_processor.tokenizer.padding_side == "left"
    assert loaded_processor.tokenizer.get_vocab() == processor.tokenizer.get_vocab()
    assert loaded_model.generation_config.pad_token_id == processor.tokenizer.pad_token_id
    assert loaded_model.generation_config.eos_token_id == processor.tokenizer.eos_token_id

    batch = _batch()
    enc, loaded_enc = collate(processor, batch), collate(loaded_processor, batch)
    assert set(enc) == set(loaded_enc)
    for key in enc:
        assert torch.equal(enc[key], loaded_enc[key]), key
    with torch.no_grad():
        logits = model(**enc).logits
        loaded_logits = loaded_model(**loaded_enc).logits
    assert torch.equal(logits, loaded_logits)
    # The pixel budget survives the round trip.
    big = loaded_processor(text=["<|vision_start|><|image_pad|><|vision_end|>"], images=[_image(size=448)],
                           return_tensors="pt")
    assert big["image_grid_thw"].tolist() == [[1, 8, 8]]


def test_loaded_model_generates(saved):
    model, processor = load_model(saved), load_processor(saved)
    text = processor.apply_chat_template(prompts.questioner_messages(), add_generation_prompt=True, tokenize=False)
    enc = processor(text=[text, text], images=[_image(1), _image(2)], return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=5, do_sample=False)
    assert out.shape[0] == 2 and out.shape[1] <= enc["input_ids"].shape[1] + 5
    assert torch.equal(out[:, : enc["input_ids"].shape[1]], enc["input_ids"])


def test_last_complete_checkpoint_skips_a_half_written_one(tmp_path):
    from visplay_core.grpo import last_complete_checkpoint

    assert last_complete_checkpoint(tmp_path / "missing") is None
    for step, state in ((2, '{"global_step": 2}'), (4, '{"global_step": 4}'), (10, '{"global_st')):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text(state)
    (tmp_path / "checkpoint-12").mkdir()  # killed before its state was written
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-4")
