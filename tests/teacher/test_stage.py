"""``cme-vlm teacher answer`` end to end: the offline default, and a kill -9 in the middle of a Gemini run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from fake_gemini import FakeGemini, default_answer

from cme_vlm.cli import main
from cme_vlm.data.records import load_dataset
from cme_vlm.teacher.stage import answer

from .conftest import KEY


def test_offline_cli_answers_everything_and_sends_nothing(records_dir, tmp_path):
    out = tmp_path / "02-teacher"
    assert main(["teacher", "answer", "--dataset", str(records_dir), "--out", str(out)]) == 0
    ds = load_dataset(out)
    assert set(ds["provenance"]) == {"teacher"} and set(ds["teacher_model"]) == {"offline-kb"}
    assert (out / "audit.jsonl").read_text() == ""
    assert (out / "config.yaml").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["answered"] == 10 and summary["failed"] == 0
    assert main(["teacher", "answer", "--dataset", str(records_dir), "--out", str(out)]) == 0
    assert load_dataset(out)["answered_at"] == ds["answered_at"]  # resumed from the journal: identical
    assert json.loads((out / "summary.json").read_text())["cached"] == 10


@pytest.mark.slow
def test_kill_minus_nine_mid_run_pays_for_nothing_twice(records_dir, gemini_cfg, tmp_path):
    def slow_answer(body):
        time.sleep(0.3)
        return default_answer(body)

    out = tmp_path / "02-teacher"
    with FakeGemini(answer=slow_answer) as fake:
        overrides = ["teacher=gemini", f"teacher.gemini.base_url={fake.url}", "teacher.gemini.api_key_env=CME_TEST_GEMINI_KEY",
                     "teacher.gemini.concurrency=1", "teacher.gemini.requests_per_minute=0"]
        env = {**os.environ, "CME_TEST_GEMINI_KEY": KEY}
        cmd = [sys.executable, "-m", "cme_vlm.cli", "teacher", "answer", "--dataset", str(records_dir), "--out", str(out)]
        proc = subprocess.Popen(cmd + overrides, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while sum(fake.answered.values()) < 4 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        first = len(fake.calls)
        assert 4 <= first < 10
        gemini_cfg.teacher.gemini.base_url = fake.url
        answer(gemini_cfg, records_dir, out)
    assert max(fake.answered.values()) <= 2 and sum(fake.answered.values()) <= 11  # at most the one in flight
    repeats = [d for d, n in fake.answered.items() if n > 1]
    assert len(repeats) <= 1
    ds = load_dataset(out)
    assert set(ds["provenance"]) == {"teacher"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["cached"] >= 3
