"""The Lightning trainer both training stages use: devices, strategy, precision, checkpoints, logging, resume."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import lightning as L
from lightning import Callback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.strategies import Strategy

from cme_vlm.errors import ConfigError
from cme_vlm.schema import ExperimentConfig, TrainConfig
from cme_vlm.tracking import wandb_logger
from cme_vlm.training.checkpoints import StageCheckpoints, StreamingCheckpointIO
from cme_vlm.training.interrupt import InterruptAtBatchEnd
from cme_vlm.training.precision import precision_plugin
from cme_vlm.training.progress import progress_bar
from cme_vlm.training.sharding import STRATEGY as FSDP
from cme_vlm.training.sharding import ShardedDataParallel


def build_trainer(
    train: TrainConfig, cfg: ExperimentConfig, out: Path, total_steps: int, job: str, callbacks: list[Callback] = ()
) -> L.Trainer:
    """A Lightning trainer from ``TrainConfig``: devices, strategy, precision, checkpoints, logging."""
    return L.Trainer(
        accelerator=train.accelerator, devices=devices(train), strategy=strategy(train, job, callbacks),
        num_nodes=train.num_nodes, plugins=[precision_plugin(train, job), StreamingCheckpointIO()],
        max_epochs=train.epochs, max_steps=total_steps, val_check_interval=train.val_every_n_steps or None,
        log_every_n_steps=train.log_every_n_steps,
        callbacks=[StageCheckpoints(out / "checkpoints", train, job), progress_bar(job), InterruptAtBatchEnd(),
                   *callbacks],
        logger=wandb_logger(cfg.wandb, cfg, out, job), default_root_dir=str(out), num_sanity_val_steps=0,
        enable_model_summary=False,
    )


def devices(train: TrainConfig) -> Any:
    """``devices: auto`` is one device under gradient release (each parameter steps before any averaging over
    devices, so it cannot run on more), else Lightning's choice: every GPU there is."""
    return 1 if train.devices == "auto" and train.gradient_release else train.devices


def strategy(train: TrainConfig, stage: str, callbacks: list[Callback] = ()) -> str | Strategy:
    """The Lightning strategy ``<stage>.strategy`` names; ``fsdp`` is FSDP2 (``cme_vlm.training.sharding``)."""
    if train.strategy != FSDP:
        if train.strategy.startswith(FSDP):
            raise ConfigError(f"{stage}.strategy={train.strategy} is Lightning's FSDPStrategy (FSDP1), which cannot run "
                              f"this project's manual optimisation (Lightning issue #19626). Use {stage}.strategy=fsdp.")
        return train.strategy
    if train.gradient_release:
        raise ConfigError(f"{stage}.gradient_release=true steps each parameter inside the backward pass, before FSDP "
                          f"has reduce-scattered its gradient (optimizer-in-backward under FSDP is not built here). "
                          f"With {stage}.strategy=fsdp set {stage}.gradient_release=false: the optimizer states and "
                          "gradients are sharded over the devices instead.")
    # imported here, not above: the callbacks load the judges' clients, which the bench's training rows do without
    from cme_vlm.callbacks import SampledValidationCallback

    if any(isinstance(c, SampledValidationCallback) for c in callbacks):
        raise ConfigError(f"{stage}.strategy=fsdp cannot answer the validation samples of wandb.callbacks (judge, "
                          "per_structure, samples): each process would generate with weights sharded over all of "
                          "them. Set wandb.callbacks=[ablation] (or wandb.judge_subset=0) and judge the exported "
                          "model with the eval stage.")
    return ShardedDataParallel()


def fit(trainer: L.Trainer, module: L.LightningModule, data: L.LightningDataModule, resume: Path | None) -> None:
    """Fit, resuming from ``resume`` if given, and close the stage's W&B run so the next stage gets its own.

    A fresh run validates once first, so its validation curves (and a sweep's metric) start at step 0.
    """
    try:
        if resume is None:
            trainer.validate(module, datamodule=data, verbose=False)
        with warnings.catch_warnings():
            # our data modules resume mid-epoch through their sampler (cme_vlm.data.sampling), not the DataLoader
            warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch")
            trainer.fit(module, datamodule=data, ckpt_path=str(resume) if resume else None)
    except SystemExit:
        if trainer.interrupted:  # Lightning ends a Ctrl-C with sys.exit(1): hand it on as the interrupt it was
            raise KeyboardInterrupt from None
        raise
    finally:
        if isinstance(trainer.logger, WandbLogger):
            trainer.logger.experiment.finish()


def total_optimizer_steps(train: TrainConfig, n_batches: int) -> int:
    if train.max_steps > 0:
        return train.max_steps
    return math.ceil(n_batches / train.grad_accum) * train.epochs
