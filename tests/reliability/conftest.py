"""Shared helpers for the reliability tests: folder snapshots, CLI subprocesses, tiny overrides, a fake key."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fake_gemini import default_answer

KEY = "test-key-reliability-0123456789abcdef"  # never a real key; must appear only in request headers
KEY_ENV = "CME_RELIABILITY_GEMINI_KEY"

# A whole pipeline in well under a minute on one CPU core (20 records: 12 train, 4 val, 4 test).
TINY = [
    "data.synthetic.n_frames=12", "data.synthetic.n_procedures=6",
    "sft.epochs=2", "sft.max_steps=5", "sft.batch_size=4", "sft.checkpoint_every_n_steps=1", "sft.keep_checkpoints=5",
    "preference.k=2", "preference.max_new_tokens=8", "preference.batch_size=4",
    "dpo.epochs=1", "dpo.max_steps=1", "eval.max_new_tokens=8", "eval.max_cases=3", "eval.batch_size=1",
    "wandb.mode=disabled",
]
GEMINI_EVERYWHERE = ["teacher=gemini", "preference.judge=gemini", "eval.judge=gemini"]


def schema_answer(body: dict[str, Any]) -> dict[str, Any]:
    """What a model would write for the response schema the request asks for: pair verdict, judge scores or answer."""
    schema = body.get("generationConfig", {}).get("responseJsonSchema", {})
    fields = schema.get("properties", {})
    if "accepted" in fields:
        return {"accepted": 1, "rejected": 2, "reason": "The first names the structure; the second does not."}
    if "clinical" in fields:
        return {**{k: 4 for k in ("identification", "position", "significance", "clinical", "conciseness")},
                "explanation": "Names the structure and its role."}
    return default_answer(body)


def gemini_overrides(url: str, rpm: int = 0) -> list[str]:
    """Overrides that point every Gemini backend at the fake endpoint with tiny back-off."""
    return [
        f"teacher.gemini.base_url={url}", f"teacher.gemini.api_key_env={KEY_ENV}",
        "teacher.gemini.timeout_s=2", "teacher.gemini.max_retries=6", "teacher.gemini.backoff_base_s=0.005",
        "teacher.gemini.backoff_max_s=0.02", f"teacher.gemini.requests_per_minute={rpm}",
    ]


def snapshot(folder: Path) -> dict[str, str] | None:
    """Every file under ``folder`` (relative path -> SHA-256), or None when the folder is absent."""
    if not folder.exists():
        return None
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(folder.rglob("*"))
    }


def cli(args: list[str], log: Path) -> subprocess.Popen:
    """``python -m cme_vlm.cli ARGS`` in its own process (so it can be SIGKILLed), its output appended to ``log``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", KEY_ENV: KEY}
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "cme_vlm.cli", *args], env=env, stdout=out, stderr=out)


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-4000:]


def finish(proc: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    """Wait for a CLI process; fail with the end of its log when it did not exit 0."""
    proc.wait(timeout=timeout)
    assert proc.returncode == 0, _tail(log)


def kill_when(proc: subprocess.Popen, ready: Callable[[], bool], log: Path, timeout: float = 180) -> None:
    """SIGKILL ``proc`` as soon as ``ready()`` holds; fail if it exits first or never gets there."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"the process ended (rc {proc.returncode}) before the kill point:\n{_tail(log)}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the kill point was never reached:\n{_tail(log)}")
        time.sleep(0.01)
    proc.kill()
    proc.wait(timeout=60)
    assert proc.returncode == -9


def jsonl_lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.is_file() else 0


@pytest.fixture(scope="session")
def data_trees() -> type:
    """The frames-and-masks tree writers of ``tests/data/conftest.py`` (``Trees``), for tests outside that folder."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("data_trees", Path(__file__).parents[1] / "data" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Trees
