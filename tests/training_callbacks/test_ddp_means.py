"""The callbacks' means under data parallelism: two CPU processes over gloo log what one process logs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from offline_wandb import offline_runs, read_offline_run, read_table

from cme_vlm.data.records import save_dataset

CALLBACK_KEYS = ("val/judge", "val/identification", "val/laterality_errors", "val_structure/")


def _train(dataset: Path, out: Path, devices: int) -> tuple[dict, dict]:
    """``train sft`` on ``devices`` CPU processes: its W&B history row of the validation before training, and the
    sample table it logged last."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    command = [sys.executable, "-m", "cme_vlm.cli", "train", "sft", "--dataset", str(dataset), "--out", str(out),
               f"sft.devices={devices}", f"sft.strategy={'ddp' if devices > 1 else 'auto'}", "sft.accelerator=cpu",
               "sft.epochs=1", "sft.max_steps=1", "sft.batch_size=1", "wandb.judge_subset=3",
               "eval.max_new_tokens=6", "eval.batch_size=1"]  # one case per batch: no padding differences
    result = subprocess.run(command, check=False, capture_output=True, text=True, env=env, cwd=out.parent, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    (folder,) = offline_runs(out)
    run = read_offline_run(folder)
    return next(row for row in run["history"] if "val/judge" in row), read_table(folder, run["summary"]["val/samples"])


@pytest.mark.slow
def test_callback_means_are_equal_on_one_and_two_processes(answered_records, tmp_path: Path):
    # three validation cases of three structures: one process answers two of them, the other one
    save_dataset(answered_records(n_test=0, n_val=3), tmp_path / "02-teacher")
    one, _ = _train(tmp_path / "02-teacher", tmp_path / "one", 1)
    two, samples = _train(tmp_path / "02-teacher", tmp_path / "two", 2)
    logged = {k for k in one if k.startswith(CALLBACK_KEYS)}
    assert {k for k in two if k.startswith(CALLBACK_KEYS)} == logged
    assert len([k for k in logged if k.startswith("val_structure/")]) == 9  # 3 structures x 3 metrics
    assert {k: two[k] for k in logged} == pytest.approx({k: one[k] for k in logged}, rel=1e-6)
    assert len(samples["data"]) == 3  # rank 0's table holds both processes' answers
