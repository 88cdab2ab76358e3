"""Corpora: the embedded shapes corpus, and ingestion of a user's folder with counted skips."""

import hashlib
import json
import random

import pytest
from PIL import Image

from visplay_core import corpus, world
from tests.conftest import _pattern
from visplay_core.corpus import EmptyCorpusError, content_id, ingest, scenes_by_id, write_embedded_corpus

BUDGET = 112 * 112


def _rgb_id(image):
    return hashlib.sha256(image.convert("RGB").tobytes()).hexdigest()[:16]


# --- the embedded corpus --------------------------------------------------------------------------------


def test_write_embedded_corpus(tmp_path):
    folder = write_embedded_corpus(tmp_path / "emb", n=6, seed=3)
    assert folder == tmp_path / "emb"
    pngs = sorted(p.name for p in (folder / "images").iterdir())
    assert pngs == [f"{i:05d}.png" for i in range(6)]
    rows = [json.loads(line) for line in (folder / corpus.SCENES_FILE).read_text().splitlines()]
    assert [r["file"] for r in rows] == pngs
    # Same rng sequence as the writer: scene, then the image seed, per image.
    rng = random.Random(3)
    for row in rows:
        scene = world.random_scene(rng)
        assert world.Scene.from_dict(row["scene"]) == scene
        expected = world.render(scene, seed=rng.randrange(2**31))
        with Image.open(folder / "images" / row["file"]) as stored:
            assert stored.convert("RGB").tobytes() == expected.tobytes()  # PNG is lossless
    # Scenes are kept apart from the images: nothing but PNGs in images/.
    assert all(p.suffix == ".png" for p in (folder / "images").iterdir())
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temporary folder left


def test_write_embedded_corpus_is_idempotent(tmp_path):
    folder = write_embedded_corpus(tmp_path / "emb", n=4, seed=0)
    before = {p.name: p.read_bytes() for p in (folder / "images").iterdir()}
    scenes = (folder / corpus.SCENES_FILE).read_bytes()
    mtime = (folder / corpus.SCENES_FILE).stat().st_mtime_ns
    again = write_embedded_corpus(tmp_path / "emb", n=9, seed=1)  # an existing corpus is kept as is
    assert again == folder
    assert {p.name: p.read_bytes() for p in (folder / "images").iterdir()} == before
    assert (folder / corpus.SCENES_FILE).read_bytes() == scenes
    assert (folder / corpus.SCENES_FILE).stat().st_mtime_ns == mtime
    # Rewritten elsewhere from the same seed, it is byte-identical.
    other = write_embedded_corpus(tmp_path / "emb2", n=4, seed=0)
    assert {p.name: p.read_bytes() for p in (other / "images").iterdir()} == before


def test_scenes_by_id_maps_ingested_embedded_images_to_their_scenes(tmp_path):
    folder = write_embedded_corpus(tmp_path / "emb", n=5, seed=2)
    manifest = ingest(folder, tmp_path / "ingested", max_pixels=BUDGET)
    assert len(manifest.images) == 5 and manifest.skipped == []
    by_id = scenes_by_id(folder, manifest)
    assert len(by_id) == 5
    rows = {json.loads(line)["file"]: json.loads(line)["scene"]
            for line in (folder / corpus.SCENES_FILE).read_text().splitlines()}
    for entry in manifest.images:
        name = entry["source"].split("/")[-1]
        assert by_id[entry["id"]] == world.Scene.from_dict(rows[name])
        # The id is the content of that very file, and the ingested copy is pixel-identical.
        with Image.open(folder / "images" / name) as original:
            assert entry["id"] == _rgb_id(original)
        with Image.open(tmp_path / "ingested" / "images" / f"{entry['id']}.png") as copy:
            assert _rgb_id(copy) == entry["id"]
        # And the scene really is the picture: each object's colour at its cell centre.
        with Image.open(tmp_path / "ingested" / "images" / f"{entry['id']}.png") as copy:
            for o in by_id[entry["id"]].objects:
                centre = ((o.col - 1) * world.CELL + world.CELL // 2, (o.row - 1) * world.CELL + world.CELL // 2)
                hue = world.hue_of(copy.convert("RGB").getpixel(centre))
                assert min(abs(hue - world.HUE[o.color]), 360 - abs(hue - world.HUE[o.color])) <= world.HUE_JITTER + 0.5


def test_scenes_by_id_is_empty_for_other_corpora(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    _pattern(32, 32, 0).save(src / "a.png")
    manifest = ingest(src, tmp_path / "out", max_pixels=BUDGET)
    assert scenes_by_id(src, manifest) == {}


# --- ingesting a user's folder --------------------------------------------------------------------------


def test_ingest_counts_every_skip_reason(mixed, tmp_path):
    src, good, bad = mixed
    out = tmp_path / "out"
    manifest = ingest(src, out, max_pixels=BUDGET)
    assert {s["source"]: s["reason"] for s in manifest.skipped} == bad
    expected_counts = {}
    for reason in bad.values():
        expected_counts[reason] = expected_counts.get(reason, 0) + 1
    assert manifest.skipped_by_reason == expected_counts
    assert manifest.skipped_by_reason["decompression_bomb"] == 2
    assert manifest.skipped_by_reason["not_an_image"] == 2
    written = json.loads((out / "manifest.json").read_text())
    assert written["usable"] == len(good) == len(written["images"])
    assert written["skipped"] == manifest.skipped and len(written["skipped"]) == len(bad)
    assert written["skipped_by_reason"] == expected_counts


def test_ingest_keeps_every_good_image_under_its_content_hash(mixed, tmp_path):
    src, good, _ = mixed
    out = tmp_path / "out"
    manifest = ingest(src, out, max_pixels=BUDGET)
    sources = {m["source"]: m["id"] for m in manifest.images}
    assert set(sources) == set(good)
    assert len(set(sources.values())) == len(good)
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(f"{i}.png" for i in sources.values())
    for source, image_id in sources.items():
        with Image.open(out / "images" / f"{image_id}.png") as kept:
            assert kept.mode == "RGB"
            assert _rgb_id(kept) == image_id  # the id is the hash of the kept pixels
            if good[source] is not None:  # lossless formats: the very same pixels
                assert kept.tobytes() == good[source].tobytes(), source
            else:
                assert kept.size == (33, 21)
    assert content_id(b"abc") == hashlib.sha256(b"abc").hexdigest()[:16]


def test_ingest_is_idempotent(mixed, tmp_path):
    src, _, _ = mixed
    first = ingest(src, tmp_path / "out", max_pixels=BUDGET)
    _pattern(30, 30, 99).save(src / "new.png")  # not seen: the existing manifest is reused
    again = ingest(src, tmp_path / "out", max_pixels=BUDGET)
    assert again.images == first.images and again.skipped == first.skipped
    assert again.summary() == first.summary()
    loaded = corpus.Manifest.load(tmp_path / "out")
    assert (loaded.images, loaded.skipped) == (first.images, first.skipped)
    assert loaded.skipped_by_reason == first.skipped_by_reason
    assert len(list((tmp_path / "out" / "images").iterdir())) == len(first.images)


def test_broken_link_is_unreadable(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    _pattern(20, 20, 0).save(src / "ok.png")
    (src / "gone.png").symlink_to(tmp_path / "missing.png")
    manifest = ingest(src, tmp_path / "out", max_pixels=BUDGET)
    assert manifest.skipped == [{"source": "gone.png", "reason": "unreadable"}]
    assert [m["source"] for m in manifest.images] == ["ok.png"]


def test_all_bad_folder_raises_with_reason_counts(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.png").write_bytes(b"")
    (src / "b.png").write_bytes(b"")
    (src / "c.jpg").write_text("text")
    Image.new("RGB", (4, 4)).save(src / "d.png")
    with pytest.raises(EmptyCorpusError) as info:
        ingest(src, tmp_path / "out", max_pixels=BUDGET)
    message = str(info.value)
    assert "'empty_file': 2" in message and "'not_an_image': 1" in message and "'too_small': 1" in message
    assert "'usable': 0" in message
    assert not (tmp_path / "out").exists()  # nothing half-written
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    with pytest.raises(FileNotFoundError, match="no such folder, parquet file or datasets folder"):
        ingest(tmp_path / "src" / "d.png", tmp_path / "out2", max_pixels=BUDGET)  # a file, not a corpus


def test_large_images_are_scaled_to_the_pixel_budget(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    _pattern(200, 100, 0).save(src / "big.png")
    manifest = ingest(src, tmp_path / "out", max_pixels=5000)  # scale sqrt(5000 / 20000) = 0.5
    with Image.open(tmp_path / "out" / "images" / f"{manifest.images[0]['id']}.png") as kept:
        assert kept.size == (100, 50)


# --- normalization of modes and orientation -------------------------------------------------------------


def _ingest_one(tmp_path, name, save):
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    save(src / name)
    manifest = ingest(src, tmp_path / "out", max_pixels=BUDGET)
    assert manifest.skipped == []
    with Image.open(tmp_path / "out" / "images" / f"{manifest.images[0]['id']}.png") as kept:
        kept.load()
        return kept


def test_palette_image(tmp_path):
    image = Image.new("P", (16, 16), 0)
    image.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    image.putpixel((3, 3), 1)
    kept = _ingest_one(tmp_path, "p.png", image.save)
    assert kept.mode == "RGB" and kept.size == (16, 16)
    assert kept.getpixel((0, 0)) == (10, 20, 30) and kept.getpixel((3, 3)) == (200, 100, 50)


def test_palette_with_transparency_goes_on_white(tmp_path):
    image = Image.new("P", (16, 16), 0)
    image.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    image.putpixel((3, 3), 1)
    image.info["transparency"] = 0
    kept = _ingest_one(tmp_path, "pt.png", lambda p: image.save(p, transparency=0))
    assert kept.getpixel((0, 0)) == (255, 255, 255) and kept.getpixel((3, 3)) == (200, 100, 50)


def test_rgba_is_composited_on_white(tmp_path):
    image = Image.new("RGBA", (16, 16), (255, 0, 0, 0))  # fully transparent red
    image.putpixel((1, 1), (0, 0, 255, 255))  # opaque blue
    image.putpixel((2, 2), (0, 0, 0, 128))  # half-transparent black
    kept = _ingest_one(tmp_path, "rgba.png", image.save)
    assert kept.mode == "RGB"
    assert kept.getpixel((0, 0)) == (255, 255, 255)
    assert kept.getpixel((1, 1)) == (0, 0, 255)
    assert all(abs(v - 127) <= 1 for v in kept.getpixel((2, 2)))  # 255 * (1 - 128/255)


def test_la_is_composited_on_white(tmp_path):
    image = Image.new("LA", (16, 16), (0, 0))  # transparent black
    image.putpixel((1, 1), (50, 255))  # opaque dark grey
    kept = _ingest_one(tmp_path, "la.png", image.save)
    assert kept.mode == "RGB"
    assert kept.getpixel((0, 0)) == (255, 255, 255)
    assert kept.getpixel((1, 1)) == (50, 50, 50)


def test_16_bit_grey_is_scaled_to_8_bits(tmp_path):
    image = Image.new("I;16", (16, 16), 0)
    image.putpixel((1, 1), 65535)
    image.putpixel((2, 2), 100 * 256)
    kept = _ingest_one(tmp_path, "i16.png", image.save)
    assert kept.mode == "RGB"
    assert kept.getpixel((0, 0)) == (0, 0, 0)
    assert kept.getpixel((1, 1)) == (255, 255, 255)
    assert kept.getpixel((2, 2)) == (100, 100, 100)


def test_cmyk_is_converted(tmp_path):
    image = Image.new("CMYK", (16, 16), (0, 0, 0, 0))  # no ink: white
    image.putpixel((1, 1), (255, 0, 0, 0))  # full cyan
    image.putpixel((2, 2), (0, 0, 0, 255))  # full black
    kept = _ingest_one(tmp_path, "cmyk.tif", image.save)  # TIFF keeps CMYK losslessly
    assert kept.mode == "RGB"
    assert kept.getpixel((0, 0)) == (255, 255, 255)
    assert kept.getpixel((1, 1)) == (0, 255, 255)
    assert kept.getpixel((2, 2)) == (0, 0, 0)


def test_exif_rotated_jpeg_is_made_upright(tmp_path):
    # Stored 40 wide × 20 high, red left half, blue right half, with EXIF orientation 6 ("rotate 90° clockwise
    # to display"): upright it is 20 wide × 40 high, red on top, blue below.
    stored = Image.new("RGB", (40, 20), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = 6

    kept = _ingest_one(tmp_path, "rotated.jpg", lambda p: stored.save(p, exif=exif, quality=95))
    assert kept.size == (20, 40)
    top, bottom = kept.getpixel((10, 8)), kept.getpixel((10, 32))
    assert top[0] > 200 and top[2] < 60, top  # red
    assert bottom[2] > 200 and bottom[0] < 60, bottom  # blue


def test_every_normalized_mode_is_rgb():
    for mode, color in [("P", 3), ("RGBA", (1, 2, 3, 255)), ("LA", (7, 255)), ("I;16", 512), ("CMYK", (0, 0, 0, 0)),
                        ("L", 9), ("1", 1), ("I", 1024), ("PA", (3, 255))]:
        image = Image.new(mode, (10, 10), color)
        assert corpus.normalize_image(image, BUDGET).mode == "RGB", mode
