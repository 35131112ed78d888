"""A stage's checkpoints: the newest few kept beside last.ckpt, the final state saved by SFT and DPO alike, and no
optimizer state copied off the device when training ends."""

from __future__ import annotations

import os
import tracemalloc
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.fabric.utilities.optimizer import _optimizer_to_device
from lightning.pytorch.strategies import strategy as strategy_module
from lightning.pytorch.strategies.strategy import Strategy

from cme_vlm.data.records import save_dataset
from cme_vlm.models.export import export_model
from cme_vlm.preference.reference import precompute_reference
from cme_vlm.schema import FreezingConfig, Optimizer
from cme_vlm.training.dpo_stage import train_dpo
from cme_vlm.training.sft_stage import train_sft
from cme_vlm.training.trainer import build_trainer

from .test_dpo_module import _pairs
from .test_sft_stage import _records

RELEASE = {"optimizer": Optimizer.kahan_adamw, "gradient_release": True, "grad_clip": 0.0, "precision": "bf16-true"}


@pytest.fixture(scope="module")
def inputs(tiny_loaded, tmp_path_factory) -> dict[str, Path]:
    """12 training records (3 batches of 4 an epoch), 8 training pairs with reference log-probs, the base model."""
    root = tmp_path_factory.mktemp("checkpoint-inputs")
    pairs = precompute_reference(tiny_loaded, _pairs(8), batch_size=8, max_length=512)
    return {"answered": save_dataset(_records(18), root / "answered"), "pairs": save_dataset(pairs, root / "pairs"),
            "base": export_model(tiny_loaded.model, tiny_loaded.processor, root / "base")}


def _cfg(tiny_cfg, stage: str, **train: Any):
    settings = {"batch_size": 4, "epochs": 2, "max_steps": 5, "checkpoint_every_n_steps": 1, "accelerator": "cpu",
                "freezing": FreezingConfig(), **train}
    return replace(tiny_cfg, **{stage: replace(getattr(tiny_cfg, stage), **settings)},
                   wandb=replace(tiny_cfg.wandb, mode="disabled", callbacks=["ablation"]))


def _saved(folder: Path) -> dict[str, int]:
    """Each file in the stage's checkpoint folder, and the optimizer step it holds."""
    files = sorted((folder / "checkpoints").iterdir())
    return {p.name: torch.load(p, weights_only=False)["global_step"] for p in files}


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict | list | tuple):
        for item in value.values() if isinstance(value, dict) else value:
            yield from _tensors(item)


@pytest.mark.slow
def test_training_ends_without_moving_optimizer_state_off_the_device(tiny_cfg, inputs, tmp_path, monkeypatch):
    """Lightning's teardown moves every optimizer state tensor it finds to the CPU. On the CPU that copies nothing, so
    here it moves them to ``meta``, where every tensor it reaches is a new one, and counts them."""
    moved: list[torch.Tensor] = []

    def to_meta(optimizers, device):
        for optimizer in optimizers:
            _optimizer_to_device(optimizer, torch.device("meta"))
            moved.extend(t for state in optimizer.state.values() for t in _tensors(state) if t.is_meta)

    teardown = Strategy.teardown

    def counting_teardown(self):
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(strategy_module, "_optimizers_to_device", to_meta)
            teardown(self)

    monkeypatch.setattr(Strategy, "teardown", counting_teardown)
    train_sft(_cfg(tiny_cfg, "sft", max_steps=2, **RELEASE), inputs["answered"], tmp_path)
    assert moved == []
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["optimizer_states"][0]["state"]
    assert saved and all({"exp_avg", "exp_avg_sq", "kahan_comp"} <= set(s) for s in saved.values())  # saved first


@pytest.mark.slow
def test_the_newest_checkpoints_are_kept_beside_last_which_holds_the_final_step(tiny_cfg, inputs, tmp_path):
    train_sft(_cfg(tiny_cfg, "sft"), inputs["answered"], tmp_path / "default")
    assert _saved(tmp_path / "default") == {"last.ckpt": 5, "step=5.ckpt": 5}  # 3 batches an epoch: step 5 mid-epoch
    train_sft(_cfg(tiny_cfg, "sft", checkpoint_every_n_steps=2, keep_checkpoints=0), inputs["answered"],
              tmp_path / "last-only")
    assert _saved(tmp_path / "last-only") == {"last.ckpt": 5}  # saved at steps 2 and 4, and the final state


@pytest.mark.slow
def test_dpo_saves_its_final_state_like_sft(tiny_cfg, inputs, tmp_path):
    train_dpo(_cfg(tiny_cfg, "dpo", max_steps=3, checkpoint_every_n_steps=2, batch_size=2),
              inputs["pairs"], inputs["base"], tmp_path)
    assert _saved(tmp_path) == {"last.ckpt": 3, "step=2.ckpt": 2}


def _resident() -> int:
    """This process's resident memory in bytes (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_a_checkpoint_is_written_and_read_without_a_copy_in_host_memory(tiny_cfg, tmp_path):
    """Lightning's own checkpoint IO serialises a checkpoint into a buffer in host memory and copies that buffer before
    writing it (twice the checkpoint: ~124 GB for the 7B), and reads one back whole."""
    cfg = _cfg(tiny_cfg, "sft")
    io = build_trainer(cfg.sft, cfg, tmp_path, 1, "sft").strategy.checkpoint_io
    weights = torch.arange(16 * 2**20, dtype=torch.float32)  # 64 MiB
    tracemalloc.start()
    io.save_checkpoint({"state_dict": {"w": weights}}, tmp_path / "last.ckpt")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < weights.nbytes / 16
    before = _resident()
    loaded = io.load_checkpoint(tmp_path / "last.ckpt")
    assert _resident() - before < weights.nbytes / 4  # mapped from the file, read as it is used
    assert torch.equal(loaded["state_dict"]["w"], weights)
