"""The bootstrap: a few real steps from scratch and from a checkpoint (the capacity control), saved atomically
with a log whose final evaluation carries the headroom measurement."""

import random

import torch
from safetensors.torch import load_file

from visplay_core import bench, prompts, world
from visplay_core.bootstrap import BootstrapConfig, bootstrap, example, world_texts
from visplay_core.config import BASE_CHECKPOINT
from visplay_core.model import add_tokens, build_tiny_vlm, load_model, load_processor

SMALL = dict(steps=2, batch_size=4, probe_every=1, eval_every=0, final_limit=6, final_votes=2, threads=1)


def test_bootstrap_continues_from_a_checkpoint(tmp_path):
    log = bootstrap(tmp_path / "more", BootstrapConfig(init=str(BASE_CHECKPOINT), lr=1e-4, **SMALL), progress=False)
    before, after = load_file(BASE_CHECKPOINT / "model.safetensors"), load_file(tmp_path / "more" / "model.safetensors")
    assert before.keys() == after.keys() and any(not (before[k] == after[k]).all() for k in before)
    assert [p["step"] for p in log["probes"]] == [1, 2]
    assert log["final"]["votes"] == 2 and 0 <= log["final"]["majority_accuracy"] <= 1
    assert log["config"]["init"] == str(BASE_CHECKPOINT)
    load_model(tmp_path / "more")


def test_bootstrap_from_scratch_saves_a_whole_checkpoint(tmp_path):
    log = bootstrap(tmp_path / "fresh", BootstrapConfig(**SMALL), progress=False)
    assert (tmp_path / "fresh" / "bootstrap_log.json").exists() and (tmp_path / "fresh" / "tokenizer.json").exists()
    assert log["final"]["n"] == 6
    tokenizer = load_processor(tmp_path / "fresh").tokenizer
    for token in world.ROUTE_TOKENS:  # each route is chosen by one sampled token
        assert len(tokenizer(token, add_special_tokens=False)["input_ids"]) == 1
    assert not [p for p in tmp_path.iterdir() if p.name != "fresh"]  # written atomically: no temporary left


def test_add_tokens_makes_each_route_one_token_and_grows_the_embeddings():
    model, processor = build_tiny_vlm(world_texts(50, 0), seed=0)
    tokenizer = processor.tokenizer
    assert len(tokenizer("columns-back:", add_special_tokens=False)["input_ids"]) > 1  # BPE split it
    vocab = len(tokenizer)
    assert add_tokens(model, processor, world.ROUTE_TOKENS) == list(world.ROUTE_TOKENS)
    assert len(tokenizer) == vocab + len(world.ROUTE_TOKENS) == model.get_input_embeddings().weight.shape[0]
    text = "columns-back: red circles: none. \\boxed{0}"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids[0]) == "columns-back:" and tokenizer.decode(ids) == text
    assert add_tokens(model, processor, world.ROUTE_TOKENS) == []  # already there: nothing changes
    with torch.no_grad():
        assert model(input_ids=torch.tensor([ids])).logits.shape[-1] == len(tokenizer)


def test_reasoner_examples_glance_with_share_g_else_reason_by_an_opener():
    def reasoner_targets(glance_share, n=400):
        rng = random.Random(0)
        return [example(rng, 0.0, 0.0, glance_share=glance_share) for _ in range(n)]

    for image, messages, target, answer in reasoner_targets(1.0, 50):
        question = messages[0]["content"][-1]["text"].split("\n")[0]
        assert target == prompts.format_answer(world.GLANCE, answer)  # the glance's answer is boxed and emphasised
        assert world.question_kind(question) is not None
    openers = [t.split()[0] for _, _, t, _ in reasoner_targets(0.0)]
    assert set(openers) == set(world.OPENERS)  # the four routes, each opened by its own token
    mixed = reasoner_targets(0.35)
    share = sum(t.startswith(world.GLANCE) for _, _, t, _ in mixed) / len(mixed)
    assert 0.28 < share < 0.42  # g = 0.35 of 400 draws (unanswerable questions are never glanced)


def test_glance_answers_are_the_superficial_reading_not_the_truth():
    rng = random.Random(1)
    for _ in range(100):
        scene = world.random_scene(rng)
        question, truth, _ = bench.training_question(scene, rng)
        assert world.glance_answer(scene, question) in world.answer_space(truth)
    items = bench.shapes_bench(split="validation")
    right = sum(world.glance_answer(i.scene, i.question) == i.answer for i in items) / len(items)
    assert 0.54 < right < 0.60  # 0.568 on the validation draw: wrong about four times in ten
