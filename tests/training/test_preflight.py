"""The dry-run's disk and host memory per training stage, from the retention policy and the checkpoint's contents."""

from __future__ import annotations

import shutil
from collections import namedtuple

import pytest
from rich.console import Console

from cme_vlm.config import load_config
from cme_vlm.config_files import REPO_ROOT
from cme_vlm.models.architecture import architecture_summary
from cme_vlm.training import preflight
from cme_vlm.training.preflight import footprint

STAGES = [("data", "01-data"), ("sft", "03-sft"), ("preference", "04-preference"), ("dpo", "05-dpo")]


def _paper(*overrides: str):
    """The paper's training settings (bf16 weights, Kahan AdamW) on the tiny architecture."""
    return load_config(REPO_ROOT / "experiments" / "paper.yaml", ["model=tiny", *overrides])


def test_a_checkpoint_holds_weights_and_the_optimizer_state_of_the_trained_ones(tmp_path):
    cfg = _paper("dpo.reference=in_memory", "sft.keep_checkpoints=2")
    params = architecture_summary(cfg).params
    total, trained = sum(params.values()), params["merger"] + params["language_model"]  # SFT: vision frozen
    sft = footprint(cfg, "sft", tmp_path / "03-sft")
    assert sft.checkpoint == total * 2 + trained * 3 * 2  # bf16 weights; moments and Kahan buffer in bf16
    assert (sft.kept, sft.export, sft.measured) == (3, total * 2, False)
    assert sft.disk == 4 * sft.checkpoint + sft.export  # three kept and one being written
    dpo = footprint(cfg, "dpo-r2", tmp_path / "05-dpo-r2")  # a later round: DPO's settings, all components trained
    assert dpo.checkpoint == 2 * total * 2 + total * 3 * 2  # the in-memory reference's weights are saved too
    assert dpo.host == 2 * total * 4  # policy and reference on the CPU, as loaded (tiny: float32)
    plain = footprint(_paper("sft.optimizer=adamw", "sft.precision=bf16-mixed"), "sft", tmp_path / "03-sft")
    assert plain.checkpoint == total * 4 + trained * 2 * 4  # float32 weights and moments, no Kahan buffer


def test_a_checkpoint_the_run_left_is_measured(tmp_path):
    saved = tmp_path / "03-sft" / "checkpoints" / "last.ckpt"
    saved.parent.mkdir(parents=True)
    saved.write_bytes(b"0" * 12345)
    measured = footprint(_paper(), "sft", tmp_path / "03-sft")
    assert (measured.checkpoint, measured.measured) == (12345, True)


@pytest.mark.parametrize("free", [10**15, 10**3])
def test_the_plan_warns_when_the_output_folder_lacks_the_disk(free, tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(free, 0, free))
    console = Console(record=True, width=200)
    console.print(*preflight.preflight(_paper(), tmp_path / "run", STAGES))
    text = console.export_text()
    assert "disk and host memory of the training stages" in text and "sft " in text and "dpo " in text
    assert ("warning: the training stages need" in text) == (free == 10**3)
