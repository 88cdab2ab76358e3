"""Reading a benchmark's rows from a parquet file, a hub snapshot folder, a ``save_to_disk`` folder or a
``datasets`` name, and turning them into items with unique ids."""

from __future__ import annotations

import re
from pathlib import Path

from .. import prompts
from .adapters import get_adapter
from .core import Adapter, BenchmarkDataError, Item

DATA_ROOT = Path("data")


def split_files(files: list[Path], split: str) -> list[Path]:
    """The files of ``split``: named ``<split>.parquet`` or ``<split>-...`` (a shard), never a longer name
    that starts the same (MathVerse's ``testmini_text_only.parquet`` is not ``testmini``)."""
    return [f for f in files if f.name == f"{split}.parquet" or f.name.startswith(f"{split}-")]


def _missing(adapter: Adapter, where, detail: str) -> BenchmarkDataError:
    also = f", also at {adapter.also}" if adapter.also else ""
    return BenchmarkDataError(
        f"{adapter.name}: {detail} at {where} (expected a parquet file, a save_to_disk folder, or a datasets name "
        f"such as {adapter.hub}{also}; see README)")


def _check_columns(adapter: Adapter, columns, where) -> None:
    lacking = [f for f in adapter.fields if f not in columns]
    if lacking:
        raise BenchmarkDataError(f"{adapter.name}: data at {where} lacks column(s) {', '.join(lacking)} "
                                 f"(has: {', '.join(columns)}); is it {adapter.hub}?")


def _parquet_rows(adapter: Adapter, files: list[Path], limit: int | None) -> list[dict]:
    import pyarrow.parquet as pq

    rows: list[dict] = []
    for path in files:
        parquet = pq.ParquetFile(path)
        _check_columns(adapter, parquet.schema_arrow.names, path)
        for batch in parquet.iter_batches(batch_size=64):
            rows.extend(batch.to_pylist())
            if limit is not None and len(rows) >= limit:
                return rows[:limit]
    return rows


def _dataset_rows(adapter: Adapter, dataset, split: str, limit: int | None, where) -> list[dict]:
    if hasattr(dataset, "keys"):  # a DatasetDict
        if split not in dataset:
            raise BenchmarkDataError(f"{adapter.name}: no split {split!r} at {where} (has: {', '.join(dataset)})")
        dataset = dataset[split]
    _check_columns(adapter, dataset.column_names, where)
    count = len(dataset) if limit is None else min(limit, len(dataset))
    return [dataset[i] for i in range(count)]


def _folder_rows(adapter: Adapter, path: Path, split: str, limit: int | None) -> list[dict]:
    if (path / "dataset_dict.json").exists() or (path / "state.json").exists():
        import datasets

        return _dataset_rows(adapter, datasets.load_from_disk(str(path)), split, limit, path)
    files = sorted(path.rglob("*.parquet"))
    if not files:
        raise _missing(adapter, path, "no parquet files or save_to_disk dataset")
    of_split = split_files(files, split)
    if not of_split:
        has = ", ".join(str(f.relative_to(path)) for f in files)
        raise BenchmarkDataError(f"{adapter.name}: no parquet file of split {split!r} at {path} (has: {has}); files "
                                 f"of a split are named {split}.parquet or {split}-...; give a file itself to read it")
    return _parquet_rows(adapter, of_split, limit)


def _rows(adapter: Adapter, source, split: str, limit: int | None) -> list[dict]:
    path = Path(source)
    if path.is_file():
        if path.suffix != ".parquet":
            raise _missing(adapter, path, "not a parquet file")
        return _parquet_rows(adapter, [path], limit)
    if path.is_dir():
        return _folder_rows(adapter, path, split, limit)
    local = path.parent.is_dir() and path.parent != Path(".") or path == default_source(adapter.name)
    if isinstance(source, str) and re.fullmatch(r"[\w-][\w.-]*/[\w.-]+", source) and not local:  # owner/name
        import datasets

        try:
            dataset = datasets.load_dataset(source, adapter.config, split=split)
        except Exception as e:  # noqa: BLE001 - any failure to load is reported as missing data
            first_line = (str(e).strip().splitlines() or [""])[0]
            raise BenchmarkDataError(f"{adapter.name}: no data at {source} (no such file or folder), and loading it "
                                     f"as a datasets name (split {split!r}) failed: {type(e).__name__}: "
                                     f"{first_line}") from None
        return _dataset_rows(adapter, dataset, split, limit, source)
    raise _missing(adapter, source, "no data")


def default_source(name: str) -> Path:
    return DATA_ROOT / get_adapter(name).name


def load_items(name: str, source=None, limit: int | None = None, split: str | None = None) -> list[Item]:
    """The first ``limit`` items (all when None) of benchmark ``name`` from ``source`` (default ./data/<name>).

    Raises ``BenchmarkDataError`` when the data is missing, lacks a column, or lists an item id twice.
    """
    adapter = get_adapter(name)
    source = default_source(name) if source is None else source
    rows = _rows(adapter, source, split or adapter.split, limit)
    if not rows:
        raise _missing(adapter, source, "no items")
    items = [adapter.to_item(row, i) for i, row in enumerate(rows)]
    first_row: dict[str, int] = {}
    for i, item in enumerate(items):
        if item.id in first_row:
            raise BenchmarkDataError(f"{adapter.name}: item id {item.id!r} repeats at {source} (rows "
                                     f"{first_row[item.id]} and {i}); are two splits or copies mixed there?")
        first_row[item.id] = i
    return items


def messages(item: Item) -> list[dict]:
    """The Reasoner's chat messages for ``item``: its images, then its question."""
    return prompts.reasoner_messages(item.question, n_images=len(item.images))
