"""Unlabeled image corpora: the embedded shapes world written to a folder, and folders of a user's images.

``ingest`` reads a folder once: every file is either normalized (EXIF orientation, RGB, a pixel budget)
and saved under its content hash, or skipped and counted by reason. Self-play reads only the ingested
images; the embedded world's scenes are written apart and are read only to measure.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import warnings
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterator

from PIL import Image, ImageOps

from . import world
from .io import atomic_dir, write_json, write_jsonl

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
MIN_SIDE = 8
MAX_ASPECT = 50.0
SCENES_FILE = "scenes.jsonl"


class EmptyCorpusError(ValueError):
    """No usable image: nothing to self-play on."""


def write_embedded_corpus(folder: str | Path, n: int, seed: int) -> Path:
    """``n`` shapes-world PNGs in ``folder/images``; their scenes apart in ``folder/scenes.jsonl``."""
    folder = Path(folder)
    if (folder / SCENES_FILE).exists():
        return folder
    rng = random.Random(seed)
    with atomic_dir(folder) as tmp:
        (tmp / "images").mkdir()
        rows = []
        for i in range(n):
            scene = world.random_scene(rng)
            world.render(scene, seed=rng.randrange(2**31)).save(tmp / "images" / f"{i:05d}.png")
            rows.append({"file": f"{i:05d}.png", "scene": scene.to_dict()})
        write_jsonl(tmp / SCENES_FILE, rows)
    return folder


def content_id(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def normalize_image(image: Image.Image, max_pixels: int) -> Image.Image:
    """Upright RGB within the pixel budget: EXIF orientation applied, palette/alpha/16-bit/CMYK handled."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        image = image.point(lambda v: v / 256).convert("L")
    if image.mode in ("P", "PA", "LA", "RGBA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    image = image.convert("RGB")
    if image.width * image.height > max_pixels:
        scale = (max_pixels / (image.width * image.height)) ** 0.5
        image = image.resize((max(1, int(image.width * scale)), max(1, int(image.height * scale))), Image.BICUBIC)
    return image


def _decode(read: Callable[[], bytes], max_pixels: int) -> tuple[Image.Image | None, str | None, dict]:
    """(normalized image, None, {format, width, height} of the original) or (None, reason for skipping, {})."""
    try:
        data = read()
    except OSError:
        return None, "unreadable", {}
    if not data:
        return None, "empty_file", {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                img.seek(0)  # first frame of animations
                img.load()
                if min(img.size) < MIN_SIDE:
                    return None, "too_small", {}
                if max(img.size) / min(img.size) > MAX_ASPECT:
                    return None, "extreme_aspect", {}
                info = {"format": img.format, "width": img.width, "height": img.height}
                return normalize_image(img, max_pixels), None, info
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return None, "decompression_bomb", {}
    except (OSError, SyntaxError, ValueError):
        return None, "not_an_image", {}


@dataclass
class Manifest:
    images: list[dict] = field(default_factory=list)  # {"id", "source"}
    skipped: list[dict] = field(default_factory=list)  # {"source", "reason"}

    @property
    def skipped_by_reason(self) -> dict[str, int]:
        return dict(Counter(s["reason"] for s in self.skipped))

    @staticmethod
    def load(folder: str | Path) -> "Manifest":
        data = json.loads((Path(folder) / "manifest.json").read_text())
        return Manifest(data["images"], data["skipped"])

    def summary(self) -> dict:
        return {"usable": len(self.images), "skipped": len(self.skipped), "skipped_by_reason": self.skipped_by_reason,
                "formats": dict(Counter(i.get("format") for i in self.images))}


def entries(corpus: str | Path) -> Iterator[tuple[str, Callable[[], bytes]]]:
    """(source name, byte reader) of every image of a corpus: a folder (recursive), a parquet file, a
    ``datasets`` folder (``save_to_disk``) or ``datasets:NAME[:SPLIT]`` (from the local cache); the
    tabular ones need an image column (the first column of the ``Image`` type, or one named ``image``)."""
    text = str(corpus)
    if text.startswith("datasets:") or text.endswith(".parquet") or (Path(text) / "dataset_info.json").exists():
        yield from _table_entries(text)
        return
    folder = Path(corpus)
    if not folder.is_dir():
        raise FileNotFoundError(f"corpus {text}: no such folder, parquet file or datasets folder")
    for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
        yield str(path.relative_to(folder)), path.read_bytes


def _table_entries(source: str) -> Iterator[tuple[str, Callable[[], bytes]]]:
    import datasets

    if source.startswith("datasets:"):
        name, _, split = source[len("datasets:"):].partition(":")
        table = datasets.load_dataset(name, split=split or "train")
    elif source.endswith(".parquet"):
        table = datasets.Dataset.from_parquet(source)
    else:
        table = datasets.load_from_disk(source)
    columns = [c for c, f in table.features.items() if isinstance(f, datasets.Image)] or \
              [c for c in table.column_names if c == "image"]
    if not columns:
        raise ValueError(f"corpus {source}: no image column (columns: {', '.join(table.column_names)})")
    table = table.cast_column(columns[0], datasets.Image(decode=False))
    for i, cell in enumerate(table[columns[0]]):
        data = (cell or {}).get("bytes") or b""
        yield f"{source}#{i}", (lambda data=data: data)


def scan(corpus: str | Path, max_pixels: int, keep: Path | None = None) -> Manifest:
    """Read every image of a corpus; save usable ones as ``keep/<id>.png`` if given."""
    manifest, seen = Manifest(), set()
    for source, read in entries(corpus):
        image, reason, info = _decode(read, max_pixels)
        if image is not None:
            image_id = content_id(image.tobytes())
            if image_id in seen:
                reason = "duplicate"
            else:
                seen.add(image_id)
                manifest.images.append({"id": image_id, "source": source, **info})
                if keep is not None:
                    image.save(keep / f"{image_id}.png")
                continue
        manifest.skipped.append({"source": source, "reason": reason})
    return manifest


def ingest(corpus: str | Path, output: str | Path, max_pixels: int) -> Manifest:
    """Normalize a corpus into ``output/images/<id>.png`` with ``output/manifest.json``; a corpus with
    no usable image stops here, before any training, saying why."""
    output = Path(output)
    if (output / "manifest.json").exists():
        return Manifest.load(output)
    with atomic_dir(output) as tmp:
        (tmp / "images").mkdir()
        manifest = scan(corpus, max_pixels, keep=tmp / "images")
        if not manifest.images:
            raise EmptyCorpusError(f"corpus {corpus}: no usable image ({manifest.summary()})")
        # The lists come last: summary()'s "skipped" count must not overwrite the skipped list.
        write_json(tmp / "manifest.json", {**manifest.summary(), "images": manifest.images,
                                           "skipped": manifest.skipped})
    return manifest


def scenes_by_id(corpus_folder: str | Path, manifest: Manifest) -> dict[str, world.Scene]:
    """Ground truth of an embedded corpus by image id (measurement only); empty for other corpora."""
    path = Path(corpus_folder) / SCENES_FILE
    if not path.exists():
        return {}
    by_file = {json.loads(line)["file"]: json.loads(line)["scene"] for line in path.read_text().splitlines()}
    return {m["id"]: world.Scene.from_dict(by_file[Path(m["source"]).name]) for m in manifest.images
            if Path(m["source"]).name in by_file}


def load_images(folder: str | Path, ids) -> dict[str, Image.Image]:
    """Ingested images by id (``folder`` is an ingested corpus); read once per process."""
    return _load_images(str(folder), tuple(ids))


@lru_cache(maxsize=8)
def _load_images(folder: str, ids: tuple[str, ...]) -> dict[str, Image.Image]:
    return {i: Image.open(Path(folder) / "images" / f"{i}.png").convert("RGB") for i in ids}
