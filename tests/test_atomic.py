"""Atomic outputs and append-only journals: a crash never leaves a half-written file or a glued line."""

from __future__ import annotations

import json
import os
import tempfile
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


@pytest.fixture(params=[0o022, 0o077, 0o002], ids=lambda m: f"umask-{m:03o}")
def umask(request: pytest.FixtureRequest):
    """Run the test under a given umask, restored afterwards."""
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def test_atomic_outputs_get_the_mode_a_plain_open_or_mkdir_would_give(tmp_path: Path, umask: int):
    plain_file, plain_dir = tmp_path / "plain.txt", tmp_path / "plain"
    plain_file.write_text("x")
    plain_dir.mkdir()
    atomic.write_text(tmp_path / "report.md", "# report\n")
    with atomic.atomic_dir(tmp_path / "model") as folder:
        (folder / "config.json").write_text("{}")
    with atomic.atomic_dir(tmp_path / "model") as folder:  # replacing an existing folder too
        (folder / "config.json").write_text("{}")
        fd, private = tempfile.mkstemp(dir=folder)  # how safetensors writes model.safetensors (0600)
        os.close(fd)
        os.replace(private, folder / "model.safetensors")
    assert _mode(tmp_path / "report.md") == _mode(plain_file) == 0o666 & ~umask
    assert _mode(tmp_path / "model") == _mode(plain_dir) == 0o777 & ~umask
    assert _mode(tmp_path / "model" / "config.json") == _mode(tmp_path / "model" / "model.safetensors") == 0o666 & ~umask


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777
