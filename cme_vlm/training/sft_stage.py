"""``cme-vlm train sft``: fine-tune the base model on the teacher's answers.

Writes ``out/checkpoints`` (Lightning; a re-run resumes from ``last.ckpt``), ``out/model``
(Hugging Face export with processor), ``out/metrics.json`` and the resolved config.
"""

from __future__ import annotations

import math
import zipfile
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning import Callback
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar
from lightning.pytorch.loggers import WandbLogger
from rich.console import Console

from callbacks import build_callbacks
from cme_vlm import atomic
from cme_vlm.config import save_config, to_dict
from cme_vlm.data.collate import ChatEncoder
from cme_vlm.data.datamodules import SFTDataModule
from cme_vlm.data.records import load_dataset
from cme_vlm.errors import TrainingError
from cme_vlm.models.export import export_model
from cme_vlm.models.freezing import apply_freezing, parameter_table
from cme_vlm.models.loading import LoadedModel, load_model
from cme_vlm.schema import ExperimentConfig, TrainConfig, WandbConfig
from cme_vlm.training.sft_module import SFTModule

console = Console(stderr=True)


def precision(train: TrainConfig) -> str:
    """``auto``: bf16 mixed precision on GPU, float32 on CPU."""
    if train.precision == "auto":
        return "bf16-mixed" if torch.cuda.is_available() else "32-true"
    return train.precision


def wandb_logger(wandb: WandbConfig, cfg: ExperimentConfig, out: Path, job: str) -> Any:
    """A W&B logger (offline unless configured); it never logs images unless allowed."""
    if wandb.mode == "disabled":
        return False
    return WandbLogger(
        project=wandb.project, entity=wandb.entity or None, group=wandb.group or None, tags=wandb.tags,
        name=f"{cfg.name}-{job}", save_dir=str(out), mode=wandb.mode, job_type=job, config=to_dict(cfg),
        log_model=False,
    )


def build_trainer(
    train: TrainConfig, cfg: ExperimentConfig, out: Path, total_steps: int, job: str, callbacks: list[Callback] = ()
) -> L.Trainer:
    """A Lightning trainer from ``TrainConfig``: devices, strategy, precision, checkpoints, logging."""
    checkpoints = ModelCheckpoint(
        dirpath=out / "checkpoints", filename="{step}", save_last=True, save_top_k=-1,
        every_n_train_steps=train.checkpoint_every_n_steps or None, save_on_train_epoch_end=True,
    )
    return L.Trainer(
        accelerator=train.accelerator, devices=train.devices, strategy=train.strategy, num_nodes=train.num_nodes,
        precision=precision(train), max_epochs=train.epochs, max_steps=total_steps,
        val_check_interval=train.val_every_n_steps or None, log_every_n_steps=train.log_every_n_steps,
        callbacks=[checkpoints, RichProgressBar(), *callbacks], logger=wandb_logger(cfg.wandb, cfg, out, job),
        default_root_dir=str(out), num_sanity_val_steps=0, enable_model_summary=False,
    )


def resume_checkpoint(out: Path) -> Path | None:
    """``out/checkpoints/last.ckpt`` when a run left one; a damaged one is refused before training starts."""
    path = out / "checkpoints" / "last.ckpt"
    if not path.is_file():
        return None
    if not zipfile.is_zipfile(path):  # torch checkpoints are zip archives; a cut-off one lacks its directory
        raise TrainingError(
            f"checkpoint '{path}' is damaged (incomplete, perhaps cut off by a crash). Rename the newest "
            f"'step=*.ckpt' beside it to last.ckpt to resume from there, or delete '{path.parent}' to start afresh."
        )
    return path


def fit(trainer: L.Trainer, module: L.LightningModule, data: L.LightningDataModule, resume: Path | None) -> None:
    """Fit, resuming from ``resume`` if given, and close the stage's W&B run so the next stage gets its own."""
    try:
        with warnings.catch_warnings():
            # our data modules resume mid-epoch through their sampler (cme_vlm.data.sampling), not the DataLoader
            warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch")
            trainer.fit(module, datamodule=data, ckpt_path=str(resume) if resume else None)
    finally:
        if isinstance(trainer.logger, WandbLogger):
            trainer.logger.experiment.finish()


def total_optimizer_steps(train: TrainConfig, n_batches: int) -> int:
    if train.max_steps > 0:
        return train.max_steps
    return math.ceil(n_batches / train.grad_accum) * train.epochs


def train_sft(cfg: ExperimentConfig, dataset: Path, out: Path) -> Path:
    """Fine-tune ``cfg.model`` on the answered records in ``dataset``; return the exported model folder."""
    out = Path(out)
    train = cfg.sft
    resume = resume_checkpoint(out)
    L.seed_everything(train.seed, workers=True, verbose=False)
    loaded = load_model(cfg)
    model = apply_freezing(loaded.model, loaded.adapter, train.freezing)
    console.print(parameter_table(model, loaded.adapter, train.freezing))
    records = load_dataset(dataset, "--dataset")
    data = SFTDataModule(records, ChatEncoder(loaded, train.max_length), train)
    data.setup("fit")
    total = total_optimizer_steps(train, len(data.train_dataloader()))
    module = SFTModule(model.train(), loaded.adapter, train, total, str(out / "checkpoints"))
    logged = build_callbacks(cfg, LoadedModel(model, loaded.processor, loaded.adapter), records)
    trainer = build_trainer(train, cfg, out, total, "sft", logged)
    if resume is None:
        trainer.validate(module, datamodule=data, verbose=False)
    fit(trainer, module, data, resume)
    trainer.save_checkpoint(out / "checkpoints" / "last.ckpt")  # the final state, wherever periodic saves stopped
    if trainer.is_global_zero:
        export_model(module.model, loaded.processor, out / "model", train.freezing.merge_lora_on_export)
        _write_metrics(module, out)
        save_config(cfg, out)
    return out / "model"


def _write_metrics(module: SFTModule, out: Path) -> None:
    val = module.history["val_loss"]
    metrics = {
        "train_loss": module.history["train_loss"],
        "val_loss": val,
        "initial_val_loss": val[0][1] if val else None,
        "final_val_loss": val[-1][1] if val else None,
        "steps": module.global_step,
    }
    atomic.write_json(out / "metrics.json", metrics)
