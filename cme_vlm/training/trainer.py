"""The Lightning trainer both training stages use: devices, strategy, precision, checkpoints, logging, resume."""

from __future__ import annotations

import math
import warnings
import zipfile
from pathlib import Path

import lightning as L
import torch
from lightning import Callback
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.strategies import Strategy

from cme_vlm.errors import ConfigError, TrainingError
from cme_vlm.schema import ExperimentConfig, TrainConfig
from cme_vlm.tracking import wandb_logger
from cme_vlm.training.progress import progress_bar
from cme_vlm.training.sharding import CHECKPOINT_FILES, ShardedDataParallel
from cme_vlm.training.sharding import STRATEGY as FSDP


def precision(train: TrainConfig) -> str:
    """``auto``: bf16 mixed precision on GPU, float32 on CPU."""
    if train.precision == "auto":
        return "bf16-mixed" if torch.cuda.is_available() else "32-true"
    return train.precision


def build_trainer(
    train: TrainConfig, cfg: ExperimentConfig, out: Path, total_steps: int, job: str, callbacks: list[Callback] = ()
) -> L.Trainer:
    """A Lightning trainer from ``TrainConfig``: devices, strategy, precision, checkpoints, logging."""
    checkpoints = ModelCheckpoint(
        dirpath=out / "checkpoints", filename="{step}", save_last=True, save_top_k=-1,
        every_n_train_steps=train.checkpoint_every_n_steps or None, save_on_train_epoch_end=True,
    )
    return L.Trainer(
        accelerator=train.accelerator, devices=train.devices, strategy=strategy(train, job, callbacks),
        num_nodes=train.num_nodes, precision=precision(train), max_epochs=train.epochs, max_steps=total_steps,
        val_check_interval=train.val_every_n_steps or None, log_every_n_steps=train.log_every_n_steps,
        callbacks=[checkpoints, progress_bar(job), *callbacks], logger=wandb_logger(cfg.wandb, cfg, out, job),
        default_root_dir=str(out), num_sanity_val_steps=0, enable_model_summary=False,
    )


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


def resume_checkpoint(out: Path, train: TrainConfig, stage: str) -> Path | None:
    """``out/checkpoints/last.ckpt`` when a run left one; a damaged one is refused before training starts.

    Under ``strategy: fsdp`` the checkpoint is a folder of shards (``cme_vlm.training.sharding``).
    """
    path = out / "checkpoints" / "last.ckpt"
    if path.is_dir():
        if not all((path / name).is_file() for name in CHECKPOINT_FILES):
            raise _damaged(path)
        if train.strategy != FSDP:
            raise TrainingError(f"checkpoint '{path}' is a folder of shards, written under {stage}.strategy=fsdp. "
                                f"Resume it with {stage}.strategy=fsdp, or delete '{path.parent}' to start afresh.")
        return path
    if not path.is_file():
        return None
    if not zipfile.is_zipfile(path):  # torch checkpoints are zip archives; a cut-off one lacks its directory
        raise _damaged(path)
    return path


def _damaged(path: Path) -> TrainingError:
    return TrainingError(
        f"checkpoint '{path}' is damaged (incomplete, perhaps cut off by a crash). Rename the newest "
        f"'step=*.ckpt' beside it to last.ckpt to resume from there, or delete '{path.parent}' to start afresh."
    )


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
