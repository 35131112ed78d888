"""What the stages' trainer asks Lightning for: one device for the paper configs on a box of many GPUs."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import pytest

from cme_vlm.config import load_config
from cme_vlm.config_files import REPO_ROOT
from cme_vlm.training import trainer as trainer_module


@pytest.fixture
def asked(monkeypatch) -> dict:
    """The keyword arguments ``build_trainer`` passes to ``lightning.Trainer`` (none is built)."""
    seen: dict = {}
    monkeypatch.setattr(trainer_module, "L", SimpleNamespace(Trainer=lambda **kwargs: seen.update(kwargs)))
    return seen


@pytest.mark.parametrize("stage", ["sft", "dpo"])
def test_the_paper_configs_train_on_one_device_where_devices_is_auto(stage, asked, tmp_path):
    """``devices: auto`` would take every GPU and choose DDP, which gradient release cannot run."""
    cfg = load_config(REPO_ROOT / "experiments" / "paper.yaml", ["wandb.mode=disabled"])
    train = getattr(cfg, stage)
    assert train.devices == "auto" and train.gradient_release
    trainer_module.build_trainer(train, cfg, tmp_path, 10, stage)
    assert asked["devices"] == 1
    ddp = replace(train, gradient_release=False, optimizer="adamw", precision="bf16-mixed", strategy="ddp")
    trainer_module.build_trainer(ddp, cfg, tmp_path, 10, stage)
    assert asked["devices"] == "auto"  # without gradient release Lightning still takes every GPU
