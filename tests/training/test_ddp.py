"""Data-parallel SFT of the tiny model with two CPU processes over gloo, through the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoConfig


@pytest.mark.slow
def test_ddp_two_cpu_processes(answered_dataset: Path, tmp_path: Path):
    out = tmp_path / "sft-ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    result = subprocess.run(
        [sys.executable, "-m", "cme_vlm.cli", "train", "sft", "--dataset", str(answered_dataset / "dataset"),
         "--out", str(out), "sft.strategy=ddp", "sft.devices=2", "sft.accelerator=cpu", "sft.epochs=1",
         "sft.max_steps=2", "sft.batch_size=2"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600,
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    assert "MEMBER: 1/2" in log and "MEMBER: 2/2" in log  # both ranks joined the gloo group
    assert AutoConfig.from_pretrained(out / "model").model_type == "qwen2_5_vl"
