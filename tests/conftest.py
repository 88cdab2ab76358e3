"""Test-wide isolation: Prefect, MLflow and Hugging Face stay offline and write only under tmp folders."""

import os
import tempfile

_root = tempfile.mkdtemp(prefix="visplay-tests-")
for key, value in {
    "PREFECT_HOME": os.path.join(_root, "prefect"),
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "MLFLOW_ENABLE_TELEMETRY": "false",
    "DO_NOT_TRACK": "1",
}.items():
    os.environ[key] = value
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("PREFECT_API_URL", None)

import random  # noqa: E402

import pytest  # noqa: E402
from PIL import Image  # noqa: E402


@pytest.fixture(scope="session")
def prefect_server():
    """One temporary Prefect server (a real API and database) for every flow test."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def _pattern(width, height, seed):
    """A small RGB image with distinct content per seed."""
    rng = random.Random(seed)
    image = Image.new("RGB", (width, height), tuple(rng.randrange(256) for _ in range(3)))
    for _ in range(20):
        x, y = rng.randrange(width), rng.randrange(height)
        image.putpixel((x, y), tuple(rng.randrange(256) for _ in range(3)))
    return image


def _gif(path, frames):
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)


@pytest.fixture
def mixed(tmp_path, monkeypatch):
    """A folder of good images in several formats and one of each bad case, with the expected outcome."""
    # Small enough that moderate images trip it: pixels > MAX warns, > 2 * MAX raises.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 30_000)
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    good = {}  # relative path -> expected RGB content (None: checked separately, lossy)
    png = _pattern(40, 30, 1)
    png.save(src / "a.png")
    good["a.png"] = png
    _pattern(33, 21, 2).save(src / "b.jpg", quality=95)
    good["b.jpg"] = None
    webp = _pattern(24, 24, 3)
    webp.save(src / "sub" / "c.webp", lossless=True)
    good["sub/c.webp"] = webp
    bmp = _pattern(20, 36, 4)
    bmp.save(src / "d.BMP", format="BMP")  # suffix case does not matter
    good["d.BMP"] = bmp
    frames = [Image.new("RGB", (30, 30), color).convert("P") for color in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    _gif(src / "e.gif", frames)
    good["e.gif"] = Image.new("RGB", (30, 30), (255, 0, 0))  # the first frame
    tiff = _pattern(50, 40, 5)
    tiff.save(src / "f.tiff")
    good["f.tiff"] = tiff

    bad = {}
    (src / "empty.png").write_bytes(b"")
    bad["empty.png"] = "empty_file"
    data = (src / "a.png").read_bytes()
    (src / "truncated.png").write_bytes(data[: len(data) // 2])
    bad["truncated.png"] = "not_an_image"
    (src / "x.jpg").write_text("this is not a JPEG\n")
    bad["x.jpg"] = "not_an_image"
    Image.new("RGB", (1, 1), (9, 9, 9)).save(src / "tiny.png")
    bad["tiny.png"] = "too_small"
    Image.new("RGB", (2000, 10), (9, 9, 9)).save(src / "wide.png")  # 20,000 px: under the bomb limit
    bad["wide.png"] = "extreme_aspect"
    png.save(src / "zz-copy-of-a.png")  # same pixels as a.png, sorted after it
    bad["zz-copy-of-a.png"] = "duplicate"
    Image.new("RGB", (200, 200), (9, 9, 9)).save(src / "bomb-warning.png")  # 40,000 > 30,000
    bad["bomb-warning.png"] = "decompression_bomb"
    Image.new("RGB", (300, 300), (9, 9, 9)).save(src / "bomb-error.png")  # 90,000 > 60,000
    bad["bomb-error.png"] = "decompression_bomb"
    (src / "notes.txt").write_text("not an image suffix: ignored, not counted")
    locked = src / "locked.png"
    _pattern(16, 16, 6).save(locked)
    locked.chmod(0)
    if os.access(locked, os.R_OK):  # root reads it anyway: leave that case out
        locked.chmod(0o644)
        locked.unlink()
    else:
        bad["locked.png"] = "unreadable"
    yield src, good, bad
    if locked.exists():
        locked.chmod(0o644)
