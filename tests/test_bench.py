"""ShapesBench: a fixed, balanced held-out set scored per kind, with a question-only baseline."""

import json
from collections import Counter

import pytest

from visplay_core import bench, world
from visplay_core.world import Obj, Scene


def exact(prediction, answer):
    return prediction == answer


@pytest.fixture(scope="module")
def items():
    return bench.shapes_bench()


def test_bench_is_deterministic(items):
    fresh = bench.sample_items(bench.SEED, bench.PER_KIND)  # not the cached tuple: rebuilt from the seed
    assert tuple(fresh) == items
    assert [i.image().tobytes() for i in fresh[:5]] == [i.image().tobytes() for i in items[:5]]
    assert bench.sample_items(bench.SEED + 7, 5) != bench.sample_items(bench.SEED, 5)


def test_every_kind_has_per_kind_valid_items(items):
    assert len(items) == bench.PER_KIND * len(world.KINDS)
    assert Counter(i.kind for i in items) == {k: bench.PER_KIND for k in world.KINDS}
    for item in items:
        assert world.oracle(item.scene, item.question) == item.answer
        assert world.question_kind(item.question) == item.kind


def test_yes_no_kinds_are_exactly_balanced(items):
    for kind in ("exists", "compare", "spatial"):
        answers = Counter(i.answer for i in items if i.kind == kind)
        assert answers == {"yes": bench.PER_KIND // 2, "no": bench.PER_KIND // 2}, kind


def test_other_kinds_have_their_answer_types(items):
    for item in items:
        if item.kind in ("count", "count2"):
            assert item.answer.isdigit() and 0 <= int(item.answer) <= world.MAX_OBJECTS
        elif item.kind == "attribute":
            assert item.answer in world.SHAPES + world.COLORS + world.SIZES


def test_item_image_is_the_rendered_scene(items):
    item = items[0]
    image = item.image()
    assert image.tobytes() == world.render(item.scene, seed=item.image_seed).tobytes()
    assert len({i.image_seed for i in items}) > len(items) * 0.99  # images are not reused


def test_limited_keeps_every_kind(items):
    kept = bench.limited(items, 3)
    assert Counter(i.kind for i in kept) == {k: 3 for k in world.KINDS}
    # The first 3 of each kind, in the bench's order.
    expected = []
    for kind in world.KINDS:
        expected += [i for i in items if i.kind == kind][:3]
    assert sorted(kept, key=items.index) == expected
    assert kept == [i for i in items if i in set(kept)]
    assert bench.limited(items, None) == list(items)
    assert bench.limited(items, 10_000) == list(items)
    assert bench.limited(items, 0) == []


def test_score_all_correct_and_all_wrong(items):
    subset = bench.limited(items, 10)
    result = bench.score(subset, [i.answer for i in subset], exact)
    assert result["accuracy"] == 1.0
    assert result["n"] == len(subset) == 60
    assert set(result["per_kind"]) == set(world.KINDS)
    assert all(v["accuracy"] == 1.0 and v["n"] == 10 for v in result["per_kind"].values())
    wrong = bench.score(subset, [None] * len(subset), exact)
    assert wrong["accuracy"] == 0.0
    assert all(v["accuracy"] == 0.0 for v in wrong["per_kind"].values())


def test_score_hand_made_predictions(items):
    subset = bench.limited(items, 4)  # 4 per kind, 24 in all
    predictions, right = [], Counter()
    for item in subset:
        # Right on the first item of each kind, and also on the second for count kinds: wrong elsewhere.
        seen = sum(1 for p in subset[: subset.index(item)] if p.kind == item.kind)
        ok = seen == 0 or (seen == 1 and item.kind in ("count", "count2"))
        predictions.append(item.answer if ok else "not an answer")
        right[item.kind] += ok
    result = bench.score(subset, predictions, exact)
    assert result["accuracy"] == pytest.approx(8 / 24)
    for kind in world.KINDS:
        assert result["per_kind"][kind]["accuracy"] == pytest.approx(right[kind] / 4)
    assert result["per_kind"]["count"]["accuracy"] == 0.5
    assert result["per_kind"]["spatial"]["accuracy"] == 0.25


def test_score_uses_the_match_function(items):
    subset = bench.limited(items, 2)
    shouted = [f"  {i.answer.upper()} " for i in subset]
    assert bench.score(subset, shouted, exact)["accuracy"] == 0.0
    loose = lambda p, a: p.strip().lower() == a  # noqa: E731
    assert bench.score(subset, shouted, loose)["accuracy"] == 1.0


def test_question_only_baseline_equals_score_of_predicting_it(items):
    subset = bench.limited(items, 50)
    predictions = [bench.question_only_answer(i.question, i.kind) for i in subset]
    result = bench.score(subset, predictions, exact)
    assert 0.0 <= result["question_only_baseline"] <= 1.0
    assert result["accuracy"] == pytest.approx(result["question_only_baseline"])
    for kind, per in result["per_kind"].items():
        assert 0.0 <= per["question_only_baseline"] <= 1.0
        assert per["accuracy"] == pytest.approx(per["question_only_baseline"]), kind
    # The question alone cannot solve the bench, but it is better than nothing on count questions ("0" is common).
    assert result["question_only_baseline"] < 0.9
    assert result["per_kind"]["count2"]["question_only_baseline"] > 0.2


def test_question_only_answer_falls_back_to_the_kind():
    assert bench.question_only_answer("Is there a purple hexagon?", "exists") in ("yes", "no")
    assert bench.question_only_answer("Never seen before", "count").isdigit()
    # A question seen often in the independent sample gets its own most common answer:
    # a specific colour-and-shape pair is usually absent.
    assert bench.question_only_answer("How many red circles are there?", "count2") == "0"
    assert bench.question_only_answer("Is there a red circle?", "exists") in ("yes", "no")


def test_score_on_hand_made_items():
    scene = Scene((Obj("circle", "red", "small", 1, 1), Obj("square", "blue", "large", 2, 3)), background=240)
    hand = [
        bench.Item(scene, 0, "What color is the circle?", "red", "attribute"),
        bench.Item(scene, 0, "How many circles are there?", "1", "count"),
        bench.Item(scene, 0, "How many squares are there?", "1", "count"),
    ]
    result = bench.score(hand, ["red", "2", "1"], exact)
    assert result["accuracy"] == pytest.approx(2 / 3)
    assert set(result["per_kind"]) == {"attribute", "count"}
    assert (result["per_kind"]["attribute"]["accuracy"], result["per_kind"]["attribute"]["n"]) == (1.0, 1)
    expected_baseline = sum(bench.question_only_answer(i.question, i.kind) == i.answer for i in hand) / 3
    assert result["question_only_baseline"] == pytest.approx(expected_baseline)
    assert result["per_kind"]["count"]["accuracy"] == 0.5
    assert result["per_kind"]["count"]["n"] == 2


def test_the_question_only_table_is_drawn_once_and_read_back_whole(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    drawn = []
    monkeypatch.setattr(bench, "draw_question_only_table",
                        lambda: drawn.append(1) or ({"Is there a red circle?": "yes"}, {"exists": "no"}))
    path = bench.question_only_cache()
    assert path.parent == tmp_path / "visplay" and bench.VERSION in path.name
    table = bench._question_only_table.__wrapped__()  # nothing kept yet: drawn, then kept
    assert table == ({"Is there a red circle?": "yes"}, {"exists": "no"}) and len(drawn) == 1
    assert bench._question_only_table.__wrapped__() == table and len(drawn) == 1  # read back, not drawn
    path.write_text('{"by_question": {"Is th')  # a copy cut short is drawn again
    assert bench._question_only_table.__wrapped__() == table and len(drawn) == 2
    assert json.loads(path.read_text()) == {"by_question": table[0], "by_kind": table[1]}

