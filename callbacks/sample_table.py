"""``SampleTableCallback``: a W&B table of validation answers; frames only where uploads are allowed."""

from __future__ import annotations

import torch.distributed as dist
import wandb
from lightning import LightningModule, Trainer
from lightning.pytorch.loggers import WandbLogger

from cme_vlm.callbacks.sampler import Sample, SampledValidationCallback, ValidationSampler

COLUMNS = ["step", "structure", "side", "prompt", "reference", "answer", "judge", "identified"]


def gather_samples(samples: list[Sample], world_size: int) -> list[Sample]:
    """Every process's samples, on every process, in the subset's order (by record id)."""
    if world_size == 1:
        return samples
    shares: list[list[Sample] | None] = [None] * world_size
    dist.all_gather_object(shares, samples)
    return sorted((s for share in shares for s in share), key=lambda s: s.row["id"])


class SampleTableCallback(SampledValidationCallback):
    """Logs ``val/samples`` every N validation epochs. ``allow_images`` adds the overlay (patient data!)."""

    def __init__(self, sampler: ValidationSampler, allow_images: bool = False, every_n_val: int = 1):
        super().__init__(sampler, every_n_val)
        self.allow_images = allow_images

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if not self.due(trainer) or not loggers:
            return
        samples = gather_samples(self.sampler.samples(pl_module.model, trainer.global_step), trainer.world_size)
        if not trainer.is_global_zero:
            return
        columns = COLUMNS + (["overlay"] if self.allow_images else [])
        table = wandb.Table(columns=columns)
        for s in samples:
            row = [trainer.global_step, s.structure, s.row["side"], s.row["prompt"], s.row["answer"], s.answer,
                   s.judge.composite, s.identified]
            table.add_data(*row, *([wandb.Image(s.overlay)] if self.allow_images else []))
        for logger in loggers:
            logger.experiment.log({"val/samples": table, "trainer/global_step": trainer.global_step})
