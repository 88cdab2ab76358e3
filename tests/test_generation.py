"""Batched generation and the engines' seams. Greedy answers do not depend on the batch (left padding,
for the tiny base and for a checkpoint laid out as a real Qwen2.5-VL one). vLLM is not installed on CPU
machines, so its engine is checked against a stand-in of vLLM's documented offline API
(``LLM(...).generate(requests, SamplingParams)``)."""

import json
import random
import sys
import types

import pytest

from visplay_core import model as model_module
from visplay_core import prompts, world
from visplay_core.config import BASE_CHECKPOINT
from visplay_core.generation import VLLMEngine, generate, make_engine
from visplay_core.model import ImageOnlyQwen2_5_VLProcessor, load_model, load_processor

QUESTIONS = ["How many circles are there?", "Is there a red circle?",
             "What color is the large square at the top left of the image?",
             "How many small blue triangles are there to the left of the red circle?"]


def _real_layout(tmp_path):
    """The tiny base saved as a Hugging Face Qwen2.5-VL checkpoint is: ``preprocessor_config.json`` and a
    ``Qwen2Tokenizer`` that pads on the right, both naming ``Qwen2_5_VLProcessor``; no processor_config.json."""
    model, processor = load_model(BASE_CHECKPOINT), load_processor(BASE_CHECKPOINT)
    model.save_pretrained(tmp_path)
    processor.image_processor.save_pretrained(tmp_path)
    processor.tokenizer.padding_side = "right"
    processor.tokenizer.save_pretrained(tmp_path)
    for name, extra in (("preprocessor_config.json", {}), ("tokenizer_config.json", {"tokenizer_class": "Qwen2Tokenizer"})):
        config = json.loads((tmp_path / name).read_text())
        (tmp_path / name).write_text(json.dumps({**config, **extra, "processor_class": "Qwen2_5_VLProcessor"}))
    (tmp_path / "chat_template.json").write_text(json.dumps({"chat_template": processor.chat_template}))
    return tmp_path


def _batched_equals_one_by_one(path):
    model, processor = load_model(path), load_processor(path)
    assert processor.tokenizer.padding_side == "left"
    images = [world.render(world.random_scene(random.Random(s)), seed=s) for s in range(len(QUESTIONS))]
    conversations = [prompts.reasoner_messages(q) for q in QUESTIONS]
    batched = generate(model, processor, images, conversations, temperature=0, max_new_tokens=40, batch_size=4)
    alone = [generate(model, processor, [i], [c], temperature=0, max_new_tokens=40)[0] for i, c in zip(images, conversations)]
    assert batched == alone


def test_greedy_answers_do_not_depend_on_the_batch_for_the_tiny_base():
    _batched_equals_one_by_one(BASE_CHECKPOINT)


def test_greedy_answers_do_not_depend_on_the_batch_for_a_real_qwen_checkpoint_layout(tmp_path):
    path = _real_layout(tmp_path)
    assert type(load_processor(path).tokenizer).__name__ == "Qwen2Tokenizer"
    _batched_equals_one_by_one(path)


def test_a_processor_autoprocessor_builds_pads_on_the_left(tmp_path, monkeypatch):
    """Where torchvision works (GPU machines), ``AutoProcessor`` builds the real ``Qwen2_5_VLProcessor``
    from these files, padding on the right; here it cannot, so the same files are read by its image-only
    subclass in ``AutoProcessor``'s place."""
    path = _real_layout(tmp_path)
    monkeypatch.setattr(model_module.AutoProcessor, "from_pretrained",
                        lambda p, **kw: ImageOnlyQwen2_5_VLProcessor.from_pretrained(p))
    assert ImageOnlyQwen2_5_VLProcessor.from_pretrained(path).tokenizer.padding_side == "right"
    _batched_equals_one_by_one(path)


def test_vllm_engine_without_vllm_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import fails as when it is not installed
    with pytest.raises(RuntimeError, match=r"pip install 'visplay\[vllm\]'"):
        make_engine(str(BASE_CHECKPOINT), "vllm")


def test_vllm_engine_sends_one_request_per_prompt_and_groups_the_n_samples(monkeypatch):
    calls = {}

    class LLM:
        def __init__(self, **kwargs):
            calls["init"] = kwargs

        def generate(self, requests, params, use_tqdm=True):
            calls["requests"], calls["params"] = requests, params
            return [types.SimpleNamespace(outputs=[types.SimpleNamespace(text=f"{i}-{j}") for j in range(params.n)])
                    for i in range(len(requests))]

    class SamplingParams:
        def __init__(self, **kwargs):
            self.__dict__.update(kwargs)

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=LLM, SamplingParams=SamplingParams))
    processor = load_processor(BASE_CHECKPOINT)
    engine = VLLMEngine(str(BASE_CHECKPOINT), processor, seed=3)
    assert calls["init"]["model"] == str(BASE_CHECKPOINT) and calls["init"]["seed"] == 3
    images = [world.render(world.Scene((), background=240), seed=i) for i in range(2)]
    out = engine.generate(images, [prompts.questioner_messages()] * 2, n=3, temperature=0.7, max_new_tokens=9, seed=1)
    assert out == [["0-0", "0-1", "0-2"], ["1-0", "1-1", "1-2"]]
    params = calls["params"]
    assert (params.n, params.temperature, params.max_tokens, params.seed) == (3, 0.7, 9, 1)
    request = calls["requests"][0]
    assert request["multi_modal_data"]["image"] is images[0]
    assert request["prompt"].endswith("<|im_start|>assistant\n") and "<|image_pad|>" in request["prompt"]


def test_a_stage_shows_one_progress_bar_over_all_its_prompts(capsys):
    from PIL import Image

    from visplay_core.config import BASE_CHECKPOINT
    from visplay_core.generation import generate
    from visplay_core.model import load_model, load_processor
    from visplay_core.progress import progress

    model, processor = load_model(BASE_CHECKPOINT), load_processor(BASE_CHECKPOINT)
    images = [Image.new("RGB", (112, 112), (255, 255, 255))] * 3
    messages = [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Is there a red circle?"}]}]] * 3
    with progress("iteration 1 · candidate_generation"):
        generate(model, processor, images, messages, temperature=0.0, max_new_tokens=4, batch_size=2)
        generate(model, processor, images[:2], messages[:2], n=2, temperature=1.0, max_new_tokens=4, batch_size=2)
    err = capsys.readouterr().err
    assert "iteration 1 · candidate_generation" in err and "5/5" in err
    with progress("iteration 1 · threshold_filtering"):
        pass  # nothing generated: no bar
    generate(model, processor, images[:1], messages[:1], temperature=0.0, max_new_tokens=4)  # outside a stage: none
    assert capsys.readouterr().err.count("threshold_filtering") == 0
