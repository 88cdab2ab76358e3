"""Atomic writes: nothing appears under its final name until it is complete."""

import json

import pytest

from visplay_core.io import atomic_dir, read_jsonl, write_json, write_jsonl, write_text_atomic


class Boom(RuntimeError):
    pass


def _siblings(path):
    return sorted(p.name for p in path.parent.iterdir())


def test_atomic_dir_creates_the_folder_on_success(tmp_path):
    target = tmp_path / "deep" / "out"
    with atomic_dir(target) as tmp:
        assert tmp.is_dir() and tmp.parent == target.parent and tmp.name.startswith(".out.tmp-")
        assert not target.exists()  # not visible while being written
        (tmp / "a.txt").write_text("A")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "b.txt").write_text("B")
    assert (target / "a.txt").read_text() == "A"
    assert (target / "sub" / "b.txt").read_text() == "B"
    assert _siblings(target) == ["out"]  # no temporary folder left behind


def test_atomic_dir_leaves_nothing_when_the_body_raises(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(Boom):
        with atomic_dir(target) as tmp:
            (tmp / "half.txt").write_text("partial")
            raise Boom()
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_keeps_the_old_folder_when_the_body_raises(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(Boom):
        with atomic_dir(target) as tmp:
            (tmp / "new.txt").write_text("new")
            raise Boom()
    assert sorted(p.name for p in target.iterdir()) == ["old.txt"]
    assert (target / "old.txt").read_text() == "old"
    assert _siblings(target) == ["out"]


def test_atomic_dir_replaces_an_existing_folder(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    (target / "old-sub").mkdir()
    with atomic_dir(target) as tmp:
        assert (target / "old.txt").exists()  # the old one stays readable until the swap
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]  # replaced, not merged
    assert _siblings(target) == ["out"]  # neither the temporary nor the old folder is left


def test_atomic_dir_twice_in_a_row(tmp_path):
    target = tmp_path / "out"
    for i in range(3):
        with atomic_dir(target) as tmp:
            (tmp / "n.txt").write_text(str(i))
    assert (target / "n.txt").read_text() == "2"
    assert _siblings(target) == ["out"]


def test_write_json(tmp_path):
    path = tmp_path / "a" / "b.json"
    write_json(path, {"b": 1, "a": [1.5, None, "x"]})
    assert json.loads(path.read_text()) == {"a": [1.5, None, "x"], "b": 1}
    assert path.read_text() == '{\n  "a": [\n    1.5,\n    null,\n    "x"\n  ],\n  "b": 1\n}\n'  # stable: sorted keys
    write_json(path, {"c": 2})  # replaces the whole file
    assert json.loads(path.read_text()) == {"c": 2}
    assert _siblings(path) == ["b.json"]


def test_write_json_failure_keeps_the_old_file(tmp_path):
    path = tmp_path / "b.json"
    write_json(path, {"ok": True})
    with pytest.raises(TypeError):
        write_json(path, {"bad": object()})  # not serialisable
    assert json.loads(path.read_text()) == {"ok": True}
    assert _siblings(path) == ["b.json"]


def test_write_text_failure_midway_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "t.txt"
    write_text_atomic(path, "old")
    with pytest.raises(UnicodeEncodeError):
        write_text_atomic(path, "new \udc80")  # a lone surrogate cannot be encoded: fails while writing
    assert path.read_text() == "old"
    assert _siblings(path) == ["t.txt"]


def test_jsonl_round_trip(tmp_path):
    rows = [{"b": 1, "a": "x"}, {"c": [1, 2]}, {}]
    path = tmp_path / "rows.jsonl"
    write_jsonl(path, rows)
    assert read_jsonl(path) == rows
    assert path.read_text().splitlines()[0] == '{"a": "x", "b": 1}'
    write_jsonl(path, [])
    assert read_jsonl(path) == []
    path.write_text('{"a": 1}\n\n  \n{"b": 2}\n')  # blank lines are skipped
    assert read_jsonl(path) == [{"a": 1}, {"b": 2}]


def test_a_secret_is_never_readable_by_others_not_even_while_it_is_written(tmp_path):
    path = tmp_path / "credentials.json"
    write_json(path, {"password": "x"}, mode=0o600)
    assert path.stat().st_mode & 0o777 == 0o600
    assert json.loads(path.read_text()) == {"password": "x"}
    write_json(path, {"password": "y"}, mode=0o600)  # a rewrite stays private
    assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["credentials.json"]
