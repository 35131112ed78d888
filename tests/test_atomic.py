"""Atomic outputs and append-only journals: a crash never leaves a half-written file or a glued line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cme_vlm import atomic


def test_an_append_after_a_torn_line_starts_its_own_line(tmp_path: Path):
    path = tmp_path / "journal.jsonl"
    atomic.append_jsonl(path, {"n": 1})
    with open(path, "a") as f:
        f.write('{"n": 2, "answer": "cut off by kill -')  # a crash mid-write
    atomic.append_jsonl(path, {"n": 3})
    assert path.read_text().startswith('{"n": 1}\n{"n": 2, "answer": "cut off by kill -\n{"n": 3}')
    assert atomic.read_jsonl(path) == [{"n": 1}, {"n": 3}]


def test_a_damaged_complete_line_is_refused_not_skipped(tmp_path: Path):
    path = tmp_path / "journal.jsonl"
    path.write_text('{"n": 1}\n{"n": 2, oops}\n{"n": 3}\n')
    with pytest.raises(json.JSONDecodeError):
        atomic.read_jsonl(path)


def test_a_failed_write_leaves_the_old_file(tmp_path: Path):
    path = tmp_path / "out.json"
    atomic.write_json(path, {"v": 1})
    with pytest.raises(TypeError):
        atomic.write_bytes(path, "not bytes")  # type: ignore[arg-type]
    assert json.loads(path.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]
