"""Ctrl-C in SFT, with the console going to a file (a log, a job scheduler): the console shows progress and
no third-party noise, ends with cme-vlm's own line (what is kept, the command that resumes), and that
command finishes the stage as one record: metrics.json and the stage time cover the whole stage, and W&B
logs both parts under the stage's one run id."""

from __future__ import annotations

import json
import re
import shlex
import signal
import time
from pathlib import Path

import pytest

from .conftest import TINY, cli, finish

STEPS = 12
SFT_ONLY = [*TINY, "wandb.mode=offline", "eval.models=[base,sft]", "sft.epochs=20", f"sft.max_steps={STEPS}"]
NOISE = ("Warning", "LeafSpec", "ModelCheckpoint", "anonymous", "Weave", "litlogger", "weights_only", "\r",
         "Traceback", "exists and is not empty")


def _interrupt_when(proc, ready, log: Path, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, log.read_text()[-4000:]
        assert time.monotonic() < deadline, log.read_text()[-4000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130, log.read_text()[-4000:]


@pytest.mark.slow
def test_ctrl_c_in_sft_says_how_to_resume_and_the_resumed_stage_is_one_record(tmp_path: Path):
    first, second = tmp_path / "first.log", tmp_path / "second.log"
    proc = cli(["run", f"output_dir={tmp_path / 'runs'}", *SFT_ONLY], first)
    _interrupt_when(proc, lambda: any((tmp_path / "runs").glob("demo-*/03-sft/checkpoints/step=3.ckpt")), first)
    (run,) = (tmp_path / "runs").glob("demo-*")
    sft = run / "03-sft"

    console = first.read_text()
    last = console.strip().splitlines()[-1]
    assert last.startswith("interrupted:") and f"kept in {run}" in last, console[-3000:]
    resume = shlex.split(last.split("Resume with: ", 1)[1])
    assert resume[:2] == ["cme-vlm", "run"] and resume[-2:] == ["--run-dir", str(run)]
    assert re.search(rf"sft step \d+/{STEPS} · loss [\d.]+ · [\d.]+ steps/s · \dm\d\ds left", console), console[-3000:]
    assert "CPU threads: 1 (OMP_NUM_THREADS)" in console
    assert not [n for n in NOISE if n in console], console[-3000:]
    interrupted = json.loads((sft / "stage.json").read_text())
    assert interrupted["status"] == "interrupted" and interrupted["attempts"] == 1 and interrupted["seconds"] > 0

    finish(cli(resume[1:], second), second)
    status = json.loads((sft / "stage.json").read_text())
    assert (status["status"], status["attempts"], status["started_at"]) == ("done", 2, interrupted["started_at"])
    assert status["seconds"] > interrupted["seconds"]
    metrics = json.loads((sft / "metrics.json").read_text())
    assert [step for step, _ in metrics["train_loss"]] == list(range(1, STEPS + 1))  # the first attempt's steps too
    assert metrics["val_loss"][0][0] == 0 and metrics["initial_val_loss"] == metrics["val_loss"][0][1]
    run_id = (sft / "wandb-run-id").read_text().strip()
    parts = sorted((sft / "wandb").glob("offline-run-*"))
    assert len(parts) == 2 and all(p.name.endswith(f"-{run_id}") for p in parts)
    assert not [n for n in NOISE if n in second.read_text()], second.read_text()[-3000:]
