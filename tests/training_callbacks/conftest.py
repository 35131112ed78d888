"""A short tiny SFT training with all four callbacks and an offline W&B run, shared by the callback tests."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest


def train_with_callbacks(cfg, dataset, out: Path) -> Path:
    """Fit the tiny model for two steps with ``build_callbacks`` and a W&B logger in offline mode; the run folder."""
    import lightning as L
    import wandb

    from cme_vlm.callbacks import build_callbacks
    from cme_vlm.models.encoding import ChatEncoder
    from cme_vlm.models.loading import load_model
    from cme_vlm.tracking import wandb_logger
    from cme_vlm.training.datamodules import SFTDataModule
    from cme_vlm.training.sft_module import SFTModule

    loaded = load_model(copy.deepcopy(cfg))
    data = SFTDataModule(dataset, ChatEncoder(loaded, 512), cfg.sft)
    module = SFTModule(loaded.model.train(), loaded.adapter, cfg.sft, total_steps=2)
    logger = wandb_logger(cfg.wandb, cfg, out, "sft")
    trainer = L.Trainer(max_steps=2, max_epochs=2, limit_val_batches=1, logger=logger, accelerator="cpu",
                        callbacks=build_callbacks(cfg, loaded, dataset), enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        default_root_dir=str(out))
    trainer.fit(module, datamodule=data)
    wandb.finish()
    runs = sorted((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs
    return runs[0]


@pytest.fixture(scope="session")
def offline_run(tiny_cfg, answered_records, tmp_path_factory):
    """(cfg, run folder) of a two-step training as the ablation ``no_overlay`` of ``demo``, images not allowed."""
    cfg = dataclasses.replace(
        tiny_cfg, name="demo-no-overlay", base="demo", ablation="no_overlay",
        data=dataclasses.replace(tiny_cfg.data, overlay=dataclasses.replace(tiny_cfg.data.overlay, enabled=False)),
        sft=dataclasses.replace(tiny_cfg.sft, batch_size=2, epochs=2, max_steps=2),
        eval=dataclasses.replace(tiny_cfg.eval, max_new_tokens=6),
        wandb=dataclasses.replace(tiny_cfg.wandb, mode="offline", judge_subset=3, allow_image_upload=False),
    )
    out = tmp_path_factory.mktemp("callbacks")
    return cfg, train_with_callbacks(cfg, answered_records(n_test=0, n_val=3), out)
