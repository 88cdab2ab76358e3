"""The Reasoner-update levers: a label-free cap on each pseudo-label's share, the ceiling arms' true
answers, per-role GRPO settings (KL, schedule, reward scaling, loss, frozen vision tower)."""

import random
from collections import Counter

import pytest
from safetensors.torch import load_file

from visplay_core import bench, world
from visplay_core.config import BASE_CHECKPOINT, ConfigError, load_config
from visplay_core.corpus import ingest, write_embedded_corpus
from visplay_core.grpo import GRPOJob, freeze_vision_tower, launch
from visplay_core.method import MethodConfig
from visplay_core.model import load_model
from visplay_core.rewards import Candidate, Vote, cap_label_share, curate, label_cap
from visplay_core.selfplay import fresh_questions, oracle_labels


@pytest.mark.parametrize("counts, share, cap", [
    ([10, 2], 0.6, 3),      # 3 <= 0.6 * (3 + 2); 4 > 0.6 * (4 + 2)
    ([5, 5], 0.5, 5),       # already balanced
    ([4, 3, 1], 0.5, 4),    # 4 <= 0.5 * 8
    ([9, 1, 1], 0.5, 2),    # 2 <= 0.5 * 4; 3 > 0.5 * 5
    ([7], 0.9, 0),          # one label alone always holds all of its kind
    ([7], 1.0, 7),          # share 1: no cap
    ([], 0.5, 0),
])
def test_label_cap_by_hand(counts, share, cap):
    assert label_cap(counts, share) == cap


def test_cap_label_share_keeps_the_first_rows_of_each_label_within_each_kind():
    rows = [("exists", "yes", i) for i in range(6)] + [("exists", "no", 6)] + [("count", "1", 7), ("count", "2", 8)]
    kept = cap_label_share(rows, label_of=lambda r: r[1], kind_of=lambda r: r[0], max_share=0.5)
    assert kept == [("exists", "yes", 0), ("exists", "no", 6), ("count", "1", 7), ("count", "2", 8)]


def _candidate(question, label, confidence=0.5, image="a"):
    return Candidate(image, question, Vote(label, confidence, {label: 5}, 10))


def test_curate_caps_pseudo_labels_per_question_kind_when_asked():
    candidates = ([_candidate(f"Is there a red {s}?", "yes", image=str(i)) for i, s in enumerate(world.SHAPES)]
                  + [_candidate("Is there a blue circle?", "no"), _candidate("How many circles are there?", "1")])
    assert len(curate(candidates, MethodConfig())) == 5
    capped = curate(candidates, MethodConfig(max_label_share=0.5), world.question_kind)
    assert Counter(c.vote.label for c in capped) == {"yes": 1, "no": 1}  # the count kind has one label: dropped
    # Without kinds every question is one kind: "yes" 3, "no" 1, "1" 1 -> cap 2.
    assert Counter(c.vote.label for c in curate(candidates, MethodConfig(max_label_share=0.5))) == \
        {"yes": 2, "no": 1, "1": 1}
    assert "max_label_share" not in MethodConfig(max_label_share=0.5).questioner_slice()  # curation only


def test_oracle_labels_replace_pseudo_labels_and_drop_invalid_questions():
    scene = world.Scene((world.Obj("circle", "red", "large", 1, 1), world.Obj("circle", "red", "small", 2, 2)), 240)
    rows = [{"image_id": "a", "question": "How many circles are there?", "pseudo_label": "1"},
            {"image_id": "a", "question": "What color is the circle?", "pseudo_label": "red"},  # two circles
            {"image_id": "a", "question": "Is there a blue square?", "pseudo_label": "yes"}]
    assert oracle_labels(rows, {"a": scene}) == [
        {"image_id": "a", "question": "How many circles are there?", "pseudo_label": "2"},
        {"image_id": "a", "question": "Is there a blue square?", "pseudo_label": "no"}]


def test_fresh_questions_are_true_and_balanced():
    rng = random.Random(0)
    scenes = {str(i): world.random_scene(rng) for i in range(40)}
    rows = fresh_questions(scenes, sorted(scenes), 600, seed=1)
    assert len(rows) == 600 and rows == fresh_questions(scenes, sorted(scenes), 600, seed=1)
    assert all(world.oracle(scenes[r["image_id"]], r["question"]) == r["pseudo_label"] for r in rows)
    exists = Counter(r["pseudo_label"] for r in rows if world.question_kind(r["question"]) == "exists")
    assert abs(exists["yes"] - exists["no"]) < 0.25 * sum(exists.values())  # the world's own draw is 80% yes
    assert set(Counter(r["pseudo_label"] for r in rows if world.question_kind(r["question"]) == "count")) >= set(
        bench.BALANCED["count"])


def test_kl_and_the_update_settings_belong_to_each_role():
    config = load_config("smoke", ["reasoner.kl_beta=0.04", "reasoner.scale_rewards=none", "reasoner.warmup_steps=2",
                                   "reasoner.lr_scheduler=cosine", "questioner.loss_type=grpo"])
    assert (config.reasoner.kl_beta, config.questioner.kl_beta) == (0.04, 0.0)
    assert (config.reasoner.scale_rewards, config.questioner.scale_rewards) == ("none", "group")
    assert config.questioner.loss_type == "grpo" and config.reasoner.lr_scheduler == "cosine"
    assert load_config("smoke").reasoner.freeze_vision is False
    with pytest.raises(ConfigError, match="questioner.kl_beta and reasoner.kl_beta"):
        load_config("smoke", ["kl_beta=0.01"])
    with pytest.raises(ConfigError, match="scale_rewards"):
        load_config("smoke", ["reasoner.scale_rewards=median"])


def test_ceiling_needs_the_embedded_world(tmp_path):
    assert load_config("smoke", ["ceiling=fresh"]).ceiling == "fresh"
    (tmp_path / "a.png").write_bytes(b"")
    with pytest.raises(ConfigError, match="ceiling"):
        load_config("smoke", [f"corpus={tmp_path}", "ceiling=curated"])


def test_a_frozen_vision_tower_stays_put_while_the_language_model_learns(tmp_path):
    model = load_model(BASE_CHECKPOINT)
    frozen = freeze_vision_tower(model)
    assert frozen == sum(p.numel() for n, p in model.named_parameters() if ".visual." in f".{n}")
    assert all(p.requires_grad == (".visual." not in f".{n}") for n, p in model.named_parameters())

    world_folder = write_embedded_corpus(tmp_path / "world", 2, seed=0)
    manifest = ingest(world_folder / "images", tmp_path / "corpus", max_pixels=112 * 112)
    rows = [{"image_id": m["id"], "question": "Is there a red circle?", "pseudo_label": "yes"}  # rewards that vary
            for m in manifest.images]
    job = GRPOJob(role="reasoner", model=str(BASE_CHECKPOINT), output=str(tmp_path / "out"),
                  work_dir=str(tmp_path / "work"), images_folder=str(tmp_path / "corpus"), rows=rows, steps=1,
                  learning_rate=1e-3, prompts_per_step=1, num_generations=4, temperature=1.5, max_new_tokens=48,
                  save_steps=1, kl_beta=0.0, seed=0, method=MethodConfig(), freeze_vision=True)
    launch(job)
    before = load_file(BASE_CHECKPOINT / "model.safetensors")
    after = load_file(tmp_path / "out" / "model" / "model.safetensors")
    changed = [k for k in before if not (before[k] == after[k]).all()]
    assert changed and not [k for k in changed if "visual" in k]


def test_a_question_the_reasoner_calls_unanswerable_is_invalid():
    from visplay_core.rewards import UNANSWERABLE, answerable_confidence, questioner_rewards

    mixed = Vote("red", 0.6, {"red": 6, UNANSWERABLE: 2, "blue": 2}, 10)
    assert answerable_confidence(mixed) == 0.6  # 2 of 10 "none": below the default half
    assert answerable_confidence(mixed, 0.2) is None and answerable_confidence(mixed, 0.3) == 0.6
    assert answerable_confidence(Vote(UNANSWERABLE, 0.5, {UNANSWERABLE: 5, "red": 5}, 10)) is None
    assert answerable_confidence(None) is None
    # No confidence for a readable question: the invalid reward, as for an unreadable one.
    paper = MethodConfig()
    assert questioner_rewards([None, 0.5], ["What color is the circle?", "How many squares are there?"], paper) == \
        [0.0, pytest.approx(1.0 - 0.5)]
    curated = curate([_candidate("Is there a red circle?", "yes"),
                      Candidate("a", "What color is the circle?", mixed)], MethodConfig(unanswerable_vote_share=0.2))
    assert [c.question for c in curated] == ["Is there a red circle?"]


def test_question_metrics_count_unanswerable_questions_by_the_vote_share_rule():
    from tasks.stages import _question_metrics
    from visplay_core.rewards import UNANSWERABLE

    def row(question, label, votes):
        return {"question": question, "pseudo_label": label, "confidence": max(votes.values()) / 10, "votes": votes,
                "m": 10}

    rows = [row("a?", "red", {"red": 6, UNANSWERABLE: 2, "blue": 2}),  # 2 "none" of 10
            row("b?", "red", {"red": 7, UNANSWERABLE: 3}),  # 3 of 10
            row("c?", UNANSWERABLE, {UNANSWERABLE: 9, "red": 1}),  # a "none" majority
            {"question": None, "pseudo_label": None, "confidence": 0.0, "votes": {}, "m": 10}]
    assert _question_metrics(rows, 0.5)["unanswerable_questions"] == 1
    assert _question_metrics(rows, 0.3)["unanswerable_questions"] == 2  # b's 3 of 10 reach 0.3
    assert _question_metrics(rows, 0.2)["unanswerable_questions"] == 3
    assert _question_metrics(rows, 0.2)["malformed_questions"] == 1


def test_invalid_questions_and_their_none_answers_for_the_bootstrap():
    from visplay_core.bootstrap import example
    from visplay_core.rewards import UNANSWERABLE

    rng = random.Random(0)
    for _ in range(50):
        scene = world.random_scene(rng)
        question = world.sample_invalid_question(scene, rng)
        assert question is not None and world.question_kind(question) and world.oracle(scene, question) is None
    answers = [example(rng, 0.0, 0.0, unanswerable_share=1.0)[3] for _ in range(20)]
    assert set(answers) == {UNANSWERABLE}
    assert UNANSWERABLE not in {example(rng, 0.0, 0.0)[3] for _ in range(50)}
