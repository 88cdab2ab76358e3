"""Generation engines at their seams: vLLM is not installed on CPU machines, so its engine is checked
against a stand-in of vLLM's documented offline API (``LLM(...).generate(requests, SamplingParams)``)."""

import sys
import types

import pytest

from visplay_core import prompts, world
from visplay_core.config import BASE_CHECKPOINT
from visplay_core.generation import VLLMEngine, make_engine
from visplay_core.model import load_processor


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
