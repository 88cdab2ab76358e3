"""The shapes world: seeded scenes and images, the question grammar's oracle, sampling, description."""

import random

import pytest

from visplay_core import world
from visplay_core.world import CELL, Obj, Scene

# A red circle top-left (row 1, col 1) and a blue square at row 2, col 3.
TWO = Scene((Obj("circle", "red", "small", 1, 1), Obj("square", "blue", "large", 2, 3)), background=240)
# Two circles (so "the circle" is ambiguous) and one square.
THREE = Scene(
    (Obj("circle", "green", "large", 1, 2), Obj("circle", "yellow", "small", 3, 1), Obj("square", "green", "small", 4, 4)),
    background=250,
)

# Same row (neither is above the other) and, for the triangles, the same column.
ROW = Scene((Obj("triangle", "red", "large", 2, 1), Obj("square", "yellow", "small", 2, 4),
             Obj("triangle", "blue", "small", 4, 1)), background=235)

# (scene, question, expected answer) covering every template of the grammar; hand-computed.
CASES = [
    # attribute
    (TWO, "What color is the circle?", "red"),
    (TWO, "What color is the square?", "blue"),
    (TWO, "What shape is the blue object?", "square"),
    (TWO, "What shape is the red object?", "circle"),
    (TWO, "What size is the red circle?", "small"),
    (TWO, "What size is the blue square?", "large"),
    (THREE, "What color is the square?", "green"),
    (THREE, "What shape is the yellow object?", "circle"),
    # exists
    (TWO, "Is there a red circle?", "yes"),
    (TWO, "Is there a red square?", "no"),
    (TWO, "Is there a large square?", "yes"),
    (TWO, "Is there a small square?", "no"),
    (TWO, "Is there a small triangle?", "no"),
    # count
    (TWO, "How many blue objects are there?", "1"),
    (TWO, "How many circles are there?", "1"),
    (TWO, "How many triangles are there?", "0"),
    (THREE, "How many circles are there?", "2"),
    (THREE, "How many green objects are there?", "2"),
    # count2
    (TWO, "How many red circles are there?", "1"),
    (TWO, "How many blue circles are there?", "0"),
    (TWO, "How many large blue objects are there?", "1"),
    (TWO, "How many small blue objects are there?", "0"),
    (THREE, "How many small green objects are there?", "1"),
    (THREE, "How many yellow circles are there?", "1"),
    # compare
    (TWO, "Are there more circles than squares?", "no"),  # 1 vs 1: not more
    (TWO, "Are there more red objects than green objects?", "yes"),  # 1 vs 0
    (TWO, "Are there more green objects than red objects?", "no"),
    (THREE, "Are there more circles than squares?", "yes"),  # 2 vs 1
    (THREE, "Are there more squares than circles?", "no"),
    (THREE, "Are there more green objects than yellow objects?", "yes"),  # 2 vs 1
    # spatial
    (TWO, "Is the red circle left of the blue square?", "yes"),  # col 1 < 3
    (TWO, "Is the blue square left of the red circle?", "no"),
    (TWO, "Is the red circle above the blue square?", "yes"),  # row 1 < 2
    (TWO, "Is the blue square above the red circle?", "no"),
    (THREE, "Is the yellow circle left of the green circle?", "yes"),  # col 1 < 2
    (THREE, "Is the yellow circle above the green circle?", "no"),  # row 3 > 1
    (THREE, "Is the green circle above the green square?", "yes"),  # row 1 < 4
    (ROW, "Is the red triangle above the yellow square?", "no"),  # same row, both ways
    (ROW, "Is the yellow square above the red triangle?", "no"),
    (ROW, "Is the red triangle left of the blue triangle?", "no"),  # same column, both ways
    (ROW, "Is the blue triangle left of the red triangle?", "no"),
    (ROW, "Is the red triangle above the blue triangle?", "yes"),
    (ROW, "What color is the square?", "yellow"),
]


@pytest.mark.parametrize("scene,question,expected", CASES)
def test_oracle_on_hand_written_scenes(scene, question, expected):
    assert world.oracle(scene, question) == expected


def test_hand_cases_cover_every_template():
    covered = {world.parse_question(q)[1] for _, q, _ in CASES}
    assert covered == {fn for _, _, fn in world.TEMPLATES}
    assert {world.question_kind(q) for _, q, _ in CASES} == set(world.KINDS)


@pytest.mark.parametrize("question,kind", [
    ("What color is the circle?", "attribute"),
    ("Is there a large square?", "exists"),
    ("How many circles are there?", "count"),
    ("How many red circles are there?", "count2"),
    ("Are there more circles than squares?", "compare"),
    ("Is the red circle above the blue square?", "spatial"),
    ("Is the sky blue?", None),
])
def test_question_kind(question, kind):
    assert world.question_kind(question) == kind


@pytest.mark.parametrize("scene,question", [
    (TWO, "What is the meaning of life?"),  # out of grammar
    (TWO, "What color is the hexagon?"),  # word outside the vocabulary
    (TWO, "What colour is the circle?"),
    (TWO, "What color is the circle? Tell me."),  # trailing text
    (TWO, ""),
    (TWO, "What color is the triangle?"),  # no such object
    (TWO, "What shape is the green object?"),
    (TWO, "What size is the red square?"),
    (THREE, "What color is the circle?"),  # two circles: ambiguous referent
    (THREE, "What shape is the green object?"),  # two green objects
    (TWO, "Is the red circle left of the red circle?"),  # same object twice
    (TWO, "Is the blue square above the blue square?"),
    (TWO, "Is the red circle left of the green square?"),  # second referent missing
    (THREE, "Is the green circle left of the yellow square?"),
    (TWO, "Are there more circles than circles?"),  # same shape twice
    (TWO, "Are there more red objects than red objects?"),
])
def test_invalid_questions_have_no_answer(scene, question):
    assert world.oracle(scene, question) is None


def test_ambiguity_is_resolved_by_a_more_specific_referent():
    # "the circle" is ambiguous in THREE, "the yellow circle" is not.
    assert world.oracle(THREE, "What color is the circle?") is None
    assert world.oracle(THREE, "What size is the yellow circle?") == "small"


@pytest.mark.parametrize("question", [
    "what color is the circle?",
    "WHAT COLOR IS THE CIRCLE?",
    "  What   color is\tthe circle?  ",
    "What color\nis the Circle?",
])
def test_parser_tolerates_case_and_whitespace(question):
    assert world.oracle(TWO, question) == "red"
    assert world.question_kind(question) == "attribute"


def test_random_scene_invariants():
    rng = random.Random(3)
    for _ in range(300):
        scene = world.random_scene(rng)
        assert 1 <= len(scene.objects) <= world.MAX_OBJECTS
        cells = [(o.row, o.col) for o in scene.objects]
        assert len(set(cells)) == len(cells)
        assert cells == sorted(cells)  # raster order
        assert all(1 <= r <= world.GRID and 1 <= c <= world.GRID for r, c in cells)
        assert 230 <= scene.background <= 255
        for o in scene.objects:
            assert o.shape in world.SHAPES and o.color in world.COLORS and o.size in world.SIZES
        assert Scene.from_dict(scene.to_dict()) == scene


def _scenes(seed, n=20):
    rng = random.Random(seed)
    return [world.random_scene(rng) for _ in range(n)]


def test_same_seed_same_scenes_and_identical_image_bytes():
    a, b = _scenes(11), _scenes(11)
    assert a == b
    for scene_a, scene_b in zip(a, b):
        assert world.render(scene_a, seed=5).tobytes() == world.render(scene_b, seed=5).tobytes()


def test_different_seed_different_scenes_and_images():
    assert _scenes(11) != _scenes(12)
    scene = _scenes(11)[0]
    assert world.render(scene, seed=5).tobytes() != world.render(scene, seed=6).tobytes()
    other = next(s for s in _scenes(12) if s != scene)
    assert world.render(scene, seed=5).tobytes() != world.render(other, seed=5).tobytes()


def _centre(o):
    return (o.col - 1) * CELL + CELL // 2, (o.row - 1) * CELL + CELL // 2


def test_render_puts_each_object_colour_at_its_cell_centre():
    rng = random.Random(7)
    checked = 0
    for i in range(60):
        scene = world.random_scene(rng)
        image = world.render(scene, seed=i)
        assert image.size == (world.IMAGE_SIZE, world.IMAGE_SIZE) == (112, 112)
        assert image.mode == "RGB"
        for o in scene.objects:
            assert _colour_at(image, _centre(o)) == o.color, (scene, o)
            checked += 1
        occupied = {(o.row, o.col) for o in scene.objects}
        for r in range(1, world.GRID + 1):
            for c in range(1, world.GRID + 1):
                if (r, c) not in occupied:  # empty cell: its landmark tint (or, rarely, a grey speckle)
                    pixel = image.getpixel(((c - 1) * CELL + CELL // 2, (r - 1) * CELL + CELL // 2))
                    bg = scene.background
                    tint = (bg - world.LANDMARK * (c - 1), bg, bg - world.LANDMARK * (r - 1))
                    assert pixel == tint or (pixel[0] == pixel[1] == pixel[2] and bg - 20 <= pixel[0] <= bg)
    assert checked > 100


def test_background_tint_tells_the_cell():
    """The landmark tint: every cell of an empty scene has its own colour, redder at the left and yellower
    at the bottom, and one step of it is the same everywhere."""
    image = world.render(Scene((), background=250), seed=0)
    corners = {(r, c): image.getpixel(((c - 1) * CELL + 2, (r - 1) * CELL + 2)) for r in range(1, 5) for c in range(1, 5)}
    assert len(set(corners.values())) == 16
    assert corners[(1, 1)] == (250, 250, 250)
    assert corners[(4, 3)] == (250 - 2 * world.LANDMARK, 250, 250 - 3 * world.LANDMARK)


def test_answer_space_holds_the_answer_and_its_alternatives():
    assert world.answer_space("yes") == ("yes", "no")
    assert world.answer_space("2") == ("0", "1", "2", "3", "4")
    assert world.answer_space("blue") == world.COLORS
    assert world.answer_space("large") == world.SIZES
    with pytest.raises(ValueError):
        world.answer_space("purple")


def _colour_at(image, xy) -> str:
    """The colour whose hue range holds the pixel's hue."""
    hue = world.hue_of(image.getpixel(xy))
    near = [c for c, h in world.HUE.items() if min(abs(hue - h), 360 - abs(hue - h)) <= world.HUE_JITTER + 0.5]
    assert len(near) == 1, (hue, near)
    return near[0]


def test_colour_hues_jitter_within_their_range_and_never_overlap():
    rng = random.Random(0)
    for colour in world.COLORS:
        hues = [world.hue_of(world.object_rgb(colour, rng)) for _ in range(300)]
        offsets = [(h - world.HUE[colour] + 180) % 360 - 180 for h in hues]
        assert max(abs(o) for o in offsets) <= world.HUE_JITTER + 0.5
        assert max(offsets) > world.HUE_JITTER / 2 and min(offsets) < -world.HUE_JITTER / 2  # it does vary
    centres = sorted(world.HUE.values())
    gaps = [b - a for a, b in zip(centres, centres[1:])] + [360 - centres[-1] + centres[0]]
    assert min(gaps) > 2 * world.HUE_JITTER  # every colour stays tellable apart


def test_render_sizes_differ():
    # 6 px right of the centre is inside a large square (half side >= 9, less a 2 px outline and 1 px jitter);
    # 10 px right is outside a small one (half side <= 8, jitter 1).
    scene = Scene((Obj("square", "blue", "large", 1, 1), Obj("square", "red", "small", 3, 3)), background=255)
    for seed in range(10):
        image = world.render(scene, seed=seed)
        large, small = scene.objects
        x, y = _centre(large)
        assert _colour_at(image, (x + 6, y)) == "blue"
        x, y = _centre(small)
        assert image.getpixel((x + 10, y))[1] > 200  # background (its green channel is the grey level)
        assert _colour_at(image, (x, y)) == "red"


def test_describe_lists_objects_in_raster_order():
    assert world.describe(TWO) == "small red circle at 1,1; large blue square at 2,3."
    assert world.describe(THREE) == ("large green circle at 1,2; small yellow circle at 3,1; "
                                     "small green square at 4,4.")
    # Listed out of order, the description is still in raster order (row, then column).
    shuffled = Scene(tuple(reversed(THREE.objects)), background=250)
    assert world.describe(shuffled) == world.describe(THREE)
    one = Scene((Obj("triangle", "yellow", "large", 4, 2),), background=230)
    assert world.describe(one) == "large yellow triangle at 4,2."


def test_sample_question_agrees_with_the_oracle():
    rng = random.Random(0)
    seen_kinds = set()
    for _ in range(300):
        scene = world.random_scene(rng)
        drawn = world.sample_question(scene, rng)
        assert drawn is not None
        question, answer, kind = drawn
        assert world.oracle(scene, question) == answer
        assert world.question_kind(question) == kind
        seen_kinds.add(kind)
    assert seen_kinds == set(world.KINDS)


@pytest.mark.parametrize("kind", world.KINDS)
def test_sample_question_of_a_kind_and_wanted_answer(kind):
    rng = random.Random(world.KINDS.index(kind))
    found = 0
    for i in range(60):
        scene = world.random_scene(rng)
        wanted = ("yes", "no")[i % 2] if kind in ("exists", "compare", "spatial") else None
        drawn = world.sample_question(scene, rng, kind=kind, answer=wanted)
        if drawn is None:  # allowed (e.g. spatial on a one-object scene); most scenes must work
            continue
        found += 1
        question, answer, got_kind = drawn
        assert got_kind == kind
        assert world.question_kind(question) == kind
        assert world.oracle(scene, question) == answer
        if wanted is not None:
            assert answer == wanted
    assert found >= 30


def test_sample_question_none_when_the_kind_cannot_apply():
    one = Scene((Obj("circle", "red", "small", 1, 1),), background=240)
    assert world.sample_question(one, random.Random(0), kind="spatial") is None  # needs two objects
    twins = Scene((Obj("circle", "red", "small", 1, 1), Obj("circle", "red", "small", 2, 2)), background=240)
    assert world.sample_question(twins, random.Random(0), kind="attribute") is None  # every referent ambiguous
    # A yes/no kind can be asked for either answer on a rich enough scene.
    assert world.sample_question(TWO, random.Random(0), kind="spatial", answer="no")[1] == "no"
    assert world.sample_question(TWO, random.Random(0), kind="spatial", answer="yes")[1] == "yes"
    # No count question of this world has the answer "7".
    assert world.sample_question(TWO, random.Random(0), kind="count", answer="7", tries=50) is None


def test_sample_question_is_deterministic():
    scene = _scenes(4)[0]
    a = [world.sample_question(scene, random.Random(9)) for _ in range(3)]
    assert a[0] == a[1] == a[2]


def test_blind_questions_are_the_grammar_drawn_without_the_image():
    rng = random.Random(0)
    drawn = [world.blind_question(rng) for _ in range(400)]
    assert drawn[:5] == [world.blind_question(r) for r in [random.Random(0)] for _ in range(5)]  # seeded
    assert {world.question_kind(q) for q in drawn} == set(world.KINDS)  # every question parses, every kind comes
    # blind: on one scene some are valid and some not, where sample_question's always are
    answers = [world.oracle(TWO, q) for q in drawn]
    assert 0 < answers.count(None) < len(answers)
    assert "Are there more circles than circles?" in drawn  # even a question no scene makes valid


def test_grammar_candidates_blind_or_from_the_scene():
    from visplay_core.selfplay import grammar_questions

    blind = grammar_questions(["a", "b"], 3, seed=1)
    assert [r["image_id"] for r in blind] == ["a"] * 3 + ["b"] * 3
    assert blind == grammar_questions(["a", "b"], 3, seed=1) and all(r["completion"] is None for r in blind)
    rng = random.Random(1)
    assert [r["question"] for r in blind] == [world.blind_question(rng) for _ in range(6)]
    one = Scene((Obj("circle", "red", "small", 1, 1),), background=240)
    oracle = grammar_questions(["a", "b"], 20, seed=1, scenes={"a": TWO, "b": one})
    assert all(world.oracle({"a": TWO, "b": one}[r["image_id"]], r["question"]) is not None for r in oracle)


def test_reasoning_lists_the_objects_each_question_refers_to():
    scene = world.Scene((world.Obj("circle", "red", "large", 1, 2), world.Obj("square", "blue", "small", 3, 1),
                         world.Obj("circle", "blue", "small", 2, 4)), 240)
    assert world.reasoning(scene, "How many circles are there?") == \
        "rows: circles: large red circle at 1,2; small blue circle at 2,4."
    assert world.reasoning(scene, "Is there a yellow square?") == "rows: yellow squares: none."
    assert world.reasoning(scene, "Are there more red objects than blue objects?") == \
        "rows: red objects: large red circle at 1,2. blue objects: small blue circle at 2,4; small blue square at 3,1."
    assert world.reasoning(scene, "Is the red circle left of the blue square?") == \
        "rows: red circles: large red circle at 1,2. blue squares: small blue square at 3,1."
    assert world.reasoning(scene, "What size is the blue square?") == "rows: blue squares: small blue square at 3,1."
    assert world.reasoning(scene, "How many small blue objects are there?") == \
        "rows: small blue objects: small blue circle at 2,4; small blue square at 3,1."
    assert world.reasoning(scene, "Why is the sky blue?") is None


def test_reasoning_routes_open_with_their_scan_order_and_list_the_same_objects():
    scene = world.Scene((world.Obj("circle", "red", "large", 1, 2), world.Obj("circle", "blue", "small", 3, 1),
                         world.Obj("circle", "blue", "small", 2, 4)), 240)
    chains = {order: world.reasoning(scene, "How many circles are there?", order) for order in world.SCAN_ORDERS}
    assert chains == {
        "rows": "rows: circles: large red circle at 1,2; small blue circle at 2,4; small blue circle at 3,1.",
        "columns": "columns: circles: small blue circle at 3,1; large red circle at 1,2; small blue circle at 2,4.",
        "rows-back": "rows-back: circles: small blue circle at 3,1; small blue circle at 2,4; large red circle at 1,2.",
        "columns-back": "columns-back: circles: small blue circle at 2,4; large red circle at 1,2; small blue circle at 3,1.",
    }
    assert world.OPENERS == ("rows:", "columns:", "rows-back:", "columns-back:")
    assert world.ROUTE_TOKENS == ("glance:", *world.OPENERS)


def test_glance_answer_reads_the_gist_and_one_word_by_hand():
    three = world.Scene((world.Obj("circle", "red", "large", 1, 2), world.Obj("square", "blue", "small", 3, 1),
                         world.Obj("circle", "blue", "small", 2, 4)), 240)
    one = world.Scene((world.Obj("triangle", "green", "small", 4, 4),), 240)
    glance = world.glance_answer
    # attribute: the largest object's, whatever the question names
    assert glance(three, "What color is the square?") == "red"  # true answer: blue
    assert glance(three, "What shape is the blue object?") == "circle"  # not a valid question: two blue objects
    assert glance(one, "What size is the green triangle?") == "small"  # no large object: the first one
    # exists: the first named attribute alone
    assert glance(three, "Is there a red square?") == "yes"  # true: no (the red object is a circle)
    assert glance(three, "Is there a yellow circle?") == "no"
    assert glance(three, "Is there a large square?") == "yes"  # size alone: the large circle counts
    # count: every object; count2: the shape or colour named last, whatever the other attribute
    assert glance(three, "How many circles are there?") == "3"  # true: 2
    assert glance(three, "How many red circles are there?") == "2"  # every circle; true: 1
    assert glance(three, "How many small blue objects are there?") == "2"  # every blue object; true: 2
    # compare: "yes" from three objects on
    assert glance(three, "Are there more red objects than blue objects?") == "yes"  # true: no
    assert glance(one, "Are there more triangles than circles?") == "no"  # true: yes
    # spatial: an object of the first named colour in the leftmost column ("left of") or the top row ("above")
    assert glance(three, "Is the red circle left of the blue square?") == "no"  # red in column 2; true: no
    assert glance(three, "Is the blue square above the red circle?") == "no"  # blue in rows 2 and 3; true: no
    assert glance(three, "Is the blue circle left of the red circle?") == "yes"  # blue square in column 1; true: no
    assert glance(one, "Why is the sky blue?") is None
