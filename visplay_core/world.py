"""The embedded shapes world: seeded scenes, their images, a question grammar and its oracle.

A scene is a few objects (shape, color, size) placed in the cells of a 4×4 grid; the image is drawn from
the scene with PIL. Each grid cell is 28 px, which is exactly one merged vision token of a Qwen2.5-VL
vision tower (patch 14, merge 2), so the world is solvable by a very small model. The background carries
a faint landmark tint, redder-to-cyan from left to right and yellower from top to bottom: a vision tower
with only relative (rotary) positions and a 16-token image give a small model no absolute anchor, and
without one it cannot tell where an object is (the first base read positions almost never right, and
spatial questions stayed at chance).

The scene is hidden ground truth: self-play sees only pixels. The oracle answers any question of the
grammar from the scene (or says it is not a valid question) and is used only to *measure*.
"""

from __future__ import annotations

import colorsys
import random
import re
from dataclasses import asdict, dataclass
from typing import Callable

from PIL import Image, ImageDraw

GRID = 4
CELL = 28
IMAGE_SIZE = GRID * CELL
SHAPES = ("circle", "square", "triangle")
COLORS = ("red", "green", "blue", "yellow")
SIZES = ("small", "large")
MAX_OBJECTS = 4
# Each object's colour is drawn around its colour's hue (degrees) and each size is a range of sides (px), so
# perception is graded, not a lookup: red and yellow lie 52 degrees apart and a jitter of 16 leaves 20 degrees
# between their extremes; sizes leave 2 px between their ranges. A small model errs near those borders
# (calibrated uncertainty, room to learn) while every object keeps one true colour and size.
HUE = {"red": 0.0, "yellow": 52.0, "green": 125.0, "blue": 225.0}
HUE_JITTER = 16.0
SIDES = {"small": (10, 16), "large": (18, 24)}
LANDMARK = 10  # tint step per grid column (red channel) and row (blue channel)
OUTLINE = (20, 20, 20)  # a dark outline shows each shape's contour whatever its color
KINDS = ("attribute", "exists", "count", "count2", "compare", "spatial")


@dataclass(frozen=True)
class Obj:
    shape: str
    color: str
    size: str
    row: int  # 1..GRID, top to bottom
    col: int  # 1..GRID, left to right


@dataclass(frozen=True)
class Scene:
    objects: tuple[Obj, ...]
    background: int  # grey level of the background tint

    def to_dict(self) -> dict:
        return {"objects": [asdict(o) for o in self.objects], "background": self.background}

    @staticmethod
    def from_dict(data: dict) -> "Scene":
        return Scene(tuple(Obj(**o) for o in data["objects"]), int(data["background"]))


def random_scene(rng: random.Random) -> Scene:
    """1..MAX_OBJECTS objects in distinct cells, listed in raster order."""
    n = rng.randint(1, MAX_OBJECTS)
    cells = sorted(rng.sample(range(GRID * GRID), n))
    objects = tuple(
        Obj(rng.choice(SHAPES), rng.choice(COLORS), rng.choice(SIZES), c // GRID + 1, c % GRID + 1) for c in cells
    )
    return Scene(objects, background=rng.randint(230, 255))


def render(scene: Scene, seed: int = 0) -> Image.Image:
    """Draw the scene: a lightly speckled background with its landmark tint, each object centred in its cell."""
    rng = random.Random(seed)
    bg = scene.background
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), (bg, bg, bg))
    draw = ImageDraw.Draw(image)
    for row in range(GRID):
        for col in range(GRID):
            tint = (bg - LANDMARK * col, bg, bg - LANDMARK * row)
            draw.rectangle((col * CELL, row * CELL, (col + 1) * CELL - 1, (row + 1) * CELL - 1), fill=tint)
    for _ in range(40):  # light texture
        x, y, d = rng.randrange(IMAGE_SIZE), rng.randrange(IMAGE_SIZE), rng.randint(8, 20)
        draw.point((x, y), fill=(bg - d, bg - d, bg - d))
    for o in scene.objects:
        half = rng.randint(*SIDES[o.size]) // 2
        cx = (o.col - 1) * CELL + CELL // 2 + rng.randint(-1, 1)
        cy = (o.row - 1) * CELL + CELL // 2 + rng.randint(-1, 1)
        box = (cx - half, cy - half, cx + half, cy + half)
        style = {"fill": object_rgb(o.color, rng), "outline": OUTLINE, "width": 2}
        if o.shape == "circle":
            draw.ellipse(box, **style)
        elif o.shape == "square":
            draw.rectangle(box, **style)
        else:
            draw.polygon([(cx, cy - half), (cx - half, cy + half), (cx + half, cy + half)], **style)
    return image


def object_rgb(color: str, rng: random.Random) -> tuple[int, int, int]:
    """One drawing of ``color``: its hue jittered by up to ``HUE_JITTER`` degrees, saturation and value
    varied."""
    hue = (HUE[color] + rng.uniform(-HUE_JITTER, HUE_JITTER)) % 360 / 360
    r, g, b = colorsys.hsv_to_rgb(hue, rng.uniform(0.7, 0.95), rng.uniform(0.75, 0.95))
    return round(r * 255), round(g * 255), round(b * 255)


def hue_of(rgb: tuple[int, int, int]) -> float:
    """The hue of an RGB pixel, in degrees."""
    return colorsys.rgb_to_hsv(*(v / 255 for v in rgb))[0] * 360


def _phrase(o: Obj) -> str:
    return f"{o.size} {o.color} {o.shape} at {o.row},{o.col}"


def describe(scene: Scene) -> str:
    """The whole scene in words, raster order."""
    return "; ".join(_phrase(o) for o in sorted(scene.objects, key=lambda o: (o.row, o.col))) + "."


# --- the question grammar -------------------------------------------------------------------------------
# Each template is (kind, text with {slots}, answer function of (scene, **slots) -> str | None).
# An answer function returns None when the question does not apply to the scene (e.g. "the circle" when
# there are two circles): such a question is not valid for that image.


def _matching(scene: Scene, **attrs: str) -> list[Obj]:
    return [o for o in scene.objects if all(getattr(o, k) == v for k, v in attrs.items())]


def _unique(scene: Scene, **attrs: str) -> Obj | None:
    found = _matching(scene, **attrs)
    return found[0] if len(found) == 1 else None


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _attribute(scene: Scene, ask: str, **attrs: str) -> str | None:
    o = _unique(scene, **attrs)
    return getattr(o, ask) if o else None


def _relation(scene: Scene, relation: str, color: str, shape: str, color2: str, shape2: str) -> str | None:
    a, b = _unique(scene, color=color, shape=shape), _unique(scene, color=color2, shape=shape2)
    if a is None or b is None or a == b:
        return None
    return _yes(a.col < b.col if relation == "left of" else a.row < b.row)


def _more(scene: Scene, attr: str, a: str, b: str) -> str | None:
    if a == b:
        return None
    return _yes(len(_matching(scene, **{attr: a})) > len(_matching(scene, **{attr: b})))


Template = tuple[str, str, Callable[..., "str | None"]]
TEMPLATES: tuple[Template, ...] = (
    ("attribute", "What color is the {shape}?", lambda s, shape: _attribute(s, "color", shape=shape)),
    ("attribute", "What shape is the {color} object?", lambda s, color: _attribute(s, "shape", color=color)),
    ("attribute", "What size is the {color} {shape}?", lambda s, color, shape: _attribute(s, "size", color=color, shape=shape)),
    ("exists", "Is there a {color} {shape}?", lambda s, color, shape: _yes(bool(_matching(s, color=color, shape=shape)))),
    ("exists", "Is there a {size} {shape}?", lambda s, size, shape: _yes(bool(_matching(s, size=size, shape=shape)))),
    ("count", "How many {shape}s are there?", lambda s, shape: str(len(_matching(s, shape=shape)))),
    ("count", "How many {color} objects are there?", lambda s, color: str(len(_matching(s, color=color)))),
    ("count2", "How many {color} {shape}s are there?", lambda s, color, shape: str(len(_matching(s, color=color, shape=shape)))),
    ("count2", "How many {size} {color} objects are there?", lambda s, size, color: str(len(_matching(s, size=size, color=color)))),
    ("compare", "Are there more {shape}s than {shape2}s?", lambda s, shape, shape2: _more(s, "shape", shape, shape2)),
    ("compare", "Are there more {color} objects than {color2} objects?", lambda s, color, color2: _more(s, "color", color, color2)),
    ("spatial", "Is the {color} {shape} left of the {color2} {shape2}?", lambda s, **k: _relation(s, "left of", **k)),
    ("spatial", "Is the {color} {shape} above the {color2} {shape2}?", lambda s, **k: _relation(s, "above", **k)),
)
_VOCAB = {"shape": SHAPES, "shape2": SHAPES, "color": COLORS, "color2": COLORS, "size": SIZES}
_SLOT = re.compile(r"\{(\w+)\}")


def _template_regex(text: str) -> re.Pattern:
    parts, last = [], 0
    for m in _SLOT.finditer(text):
        parts.append(re.escape(text[last : m.start()]).lower())
        parts.append(f"(?P<{m.group(1)}>{'|'.join(_VOCAB[m.group(1)])})")
        last = m.end()
    parts.append(re.escape(text[last:]).lower())
    return re.compile("".join(parts))


_PARSERS = [(kind, _template_regex(text), answer) for kind, text, answer in TEMPLATES]


def _canonical(question: str) -> str:
    return " ".join(question.strip().lower().split())


def parse_question(question: str) -> tuple[str, Callable[..., "str | None"], dict] | None:
    """(kind, answer function, slots) for a question of the grammar, else None."""
    text = _canonical(question)
    for kind, regex, answer in _PARSERS:
        m = regex.fullmatch(text)
        if m:
            return kind, answer, m.groupdict()
    return None


SCAN_ORDERS = {
    "rows": lambda o: (o.row, o.col),
    "columns": lambda o: (o.col, o.row),
    "rows-back": lambda o: (-o.row, -o.col),
    "columns-back": lambda o: (-o.col, -o.row),
}
# How a Reasoner's completion opens: a reasoned answer names its scan order first ("rows: red circles: ...
# \boxed{1}"), a glance boxes an answer at once ("glance: \boxed{1}"). Each opener is one token of the
# tiny base's vocabulary (``ROUTE_TOKENS``), so the first sampled token chooses the route.
OPENERS = tuple(f"{order}:" for order in SCAN_ORDERS)
GLANCE = "glance:"
ROUTE_TOKENS = (GLANCE, *OPENERS)


def reasoning(scene: Scene, question: str, order: str = "rows") -> str | None:
    """The grounded reasoning before an answer: the scan order's opener, then every object the question
    refers to, group by group ("rows: red circles: large red circle at 1,2. squares: none."), from which
    the answer follows directly. None for a question outside the grammar.

    ``order`` is one of ``SCAN_ORDERS`` (rows or columns, from either end): several valid routes to the
    same answer, each opened by its own token, so chains sampled from a model taught on them differ in the
    order they look at objects, and so in their mistakes."""
    parsed = parse_question(question)
    if parsed is None:
        return None
    slots = parsed[2]
    groups = [f"{order}:"]
    for suffix in ("", "2"):
        attrs = {a: slots[a + suffix] for a in ("size", "color", "shape") if a + suffix in slots}
        if attrs:
            noun = attrs["shape"] + "s" if "shape" in attrs else "objects"
            label = " ".join([attrs[a] for a in ("size", "color") if a in attrs] + [noun])
            found = sorted(_matching(scene, **attrs), key=SCAN_ORDERS[order])
            groups.append(f"{label}: {'; '.join(_phrase(o) for o in found) or 'none'}.")
    return " ".join(groups)


def glance_answer(scene: Scene, question: str) -> str | None:
    """The answer a glance gives: deterministic, image-dependent, wrong about four times in ten. It reads the
    scene's gist and one word of the question, never the combination the question asks about:

    - attribute: the asked attribute of the largest object (the first in raster order among equals);
    - exists: the first named attribute alone ("Is there a red square?" is "yes" when anything red is there);
    - count: every object, whatever it is; count2: every object of the shape or colour named last,
      whatever the other attribute ("How many red squares?" counts every square);
    - compare: "yes" when the scene holds three objects or more;
    - spatial: "yes" when an object of the first named color lies in the leftmost column ("left of") or
      the top row ("above") of the grid.

    None for a question outside the grammar."""
    parsed = parse_question(question)
    if parsed is None:
        return None
    kind, _, slots = parsed
    named = [(a, slots[a]) for a in ("size", "color", "shape") if a in slots]
    if kind == "attribute":
        ask = _canonical(question).split()[1]  # "what color / shape / size is ..."
        largest = max(sorted(scene.objects, key=lambda o: (o.row, o.col)), key=lambda o: o.size == "large")
        return getattr(largest, ask)
    if kind == "exists":
        return _yes(bool(_matching(scene, **dict(named[:1]))))
    if kind == "count":
        return str(len(scene.objects))
    if kind == "count2":
        return str(len(_matching(scene, **dict(named[-1:]))))
    if kind == "compare":
        return _yes(len(scene.objects) >= 3)
    edge = [o for o in _matching(scene, color=slots["color"]) if (o.col if "left" in question else o.row) == 1]
    return _yes(bool(edge))


def question_kind(question: str) -> str | None:
    parsed = parse_question(question)
    return parsed[0] if parsed else None


def oracle(scene: Scene, question: str) -> str | None:
    """The true answer of ``question`` on ``scene``, or None when it is not a valid question for it."""
    parsed = parse_question(question)
    if parsed is None:
        return None
    _, answer, slots = parsed
    return answer(scene, **slots)


def answer_space(answer: str) -> tuple[str, ...]:
    """Every answer a question with true answer ``answer`` could be given: yes/no, a count, or the values
    of the attribute asked about."""
    for values in (("yes", "no"), tuple(str(n) for n in range(MAX_OBJECTS + 1)), COLORS, SHAPES, SIZES):
        if answer in values:
            return values
    raise ValueError(f"{answer!r} is not an answer of the grammar")


def sample_invalid_question(scene: Scene, rng: random.Random, tries: int = 200) -> str | None:
    """A question of the grammar that is not valid for the scene (its oracle answer is None: the object
    it names is absent or not unique), or None if none was found in ``tries``."""
    for _ in range(tries):
        _, text, fn = rng.choice(TEMPLATES)
        slots = _random_slots(text, rng)
        if fn(scene, **slots) is None:
            return text.format(**slots)
    return None


def blind_question(rng: random.Random) -> str:
    """A question of the grammar with every template and slot drawn at random, the image unseen: what a
    Questioner that never looks would ask. Valid for a given image or not (``oracle`` says)."""
    _, text, _ = rng.choice(TEMPLATES)
    return text.format(**_random_slots(text, rng))


def _random_slots(text: str, rng: random.Random) -> dict[str, str]:
    """A value of the vocabulary for each slot of a template's text."""
    return {name: rng.choice(_VOCAB[name]) for name in _SLOT.findall(text)}


def sample_question(scene: Scene, rng: random.Random, kind: str | None = None, answer: str | None = None,
                    tries: int = 200) -> tuple[str, str, str] | None:
    """A valid (question, answer, kind) for the scene, drawn from the grammar; optionally of one kind
    and with a wanted answer (used to balance yes/no questions). None if none was found in ``tries``."""
    templates = [t for t in TEMPLATES if kind is None or t[0] == kind]
    for _ in range(tries):
        k, text, fn = rng.choice(templates)
        slots = _random_slots(text, rng)
        # Referents drawn from the scene make questions valid (and answers other than 0/no) far more often.
        if rng.random() < 0.75:
            objs = rng.sample(scene.objects, min(2, len(scene.objects)))
            for suffix, o in zip(("", "2"), objs):
                for attr in ("shape", "color", "size"):
                    if attr + suffix in slots:
                        slots[attr + suffix] = getattr(o, attr)
        result = fn(scene, **slots)
        if result is not None and (answer is None or result == answer):
            return text.format(**slots), result, k
    return None
