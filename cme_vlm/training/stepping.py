"""``ManualStepModule``: what SFT and DPO share when they step the optimizer themselves.

Both modules optimise manually (the trainer leaves accumulation and clipping to them): the
trainable parameters, AdamW with warm-up and cosine decay, gradient checkpointing, where an
accumulation window closes, and the clip → step → zero → schedule sequence live here once.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from lightning import LightningModule
from torch import nn

from cme_vlm.errors import TrainingError
from cme_vlm.schema import TrainConfig
from cme_vlm.training.logprobs import hf_model
from cme_vlm.training.optim import build_optimizer, warmup_cosine


class ManualStepModule(LightningModule):
    """A LightningModule over ``model`` that steps its optimizer at the end of each accumulation window."""

    def __init__(self, model: nn.Module, train: TrainConfig, total_steps: int, stage: str) -> None:
        super().__init__()
        self.model, self.train_cfg, self.total_steps, self.stage = model, train, total_steps, stage
        self.automatic_optimization = False
        if train.gradient_checkpointing:
            hf_model(model).gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def configure_optimizers(self) -> dict[str, Any]:
        params = self.trainable_parameters()
        if not params:
            raise TrainingError(f"{self.stage}.freezing leaves no trainable parameter; set a component to train or lora.")
        optimizer = build_optimizer(params, self.train_cfg)
        scheduler = warmup_cosine(optimizer, self.total_steps, self.train_cfg.warmup_ratio, self.train_cfg.min_lr_ratio)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def closes_window(self, batch_idx: int) -> bool:
        """Whether this batch ends an accumulation window.

        Windows follow the batch's place in the epoch, so a run resumed at a step lines them up the same way.
        """
        return (batch_idx + 1) % self.train_cfg.grad_accum == 0 or batch_idx + 1 == self.trainer.num_training_batches

    def apply_update(self) -> tuple[float, float]:
        """Clip, step, zero and schedule; the gradient norm before clipping and the next step's learning rate."""
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        clip = self.train_cfg.grad_clip if self.train_cfg.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.trainable_parameters(), clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        return float(grad_norm), scheduler.get_last_lr()[0]
