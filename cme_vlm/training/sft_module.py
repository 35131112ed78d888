"""``SFTModule``: supervised fine-tuning with the hand-written token-level loss.

Optimisation is manual so that the loss is averaged per answer token over the whole
accumulated batch (on all devices): each micro-batch back-propagates the *sum* of its token
losses, and at the optimizer step the gradients are divided by the window's token count.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from cme_vlm.errors import TrainingError
from cme_vlm.models.adapters import ModelAdapter
from cme_vlm.schema import TrainConfig
from cme_vlm.training.logprobs import answer_logprobs, count_targets
from cme_vlm.training.losses import sft_loss
from cme_vlm.training.stepping import ManualStepModule

LAST_GOOD = "last-good.ckpt"


class SFTModule(ManualStepModule):
    def __init__(self, model: nn.Module, adapter: ModelAdapter, train: TrainConfig, total_steps: int,
                 checkpoint_dir: str = "", chunk_size: int = 1024):
        super().__init__(model, train, total_steps, "sft")
        self.adapter, self.checkpoint_dir, self.chunk_size = adapter, checkpoint_dir, chunk_size
        self.history: dict[str, list] = {"train_loss": [], "val_loss": []}
        self._window = {"tokens": 0, "loss": 0.0}
        self._val = {"tokens": 0, "loss": 0.0}

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        logp = answer_logprobs(self.model, batch, self.chunk_size).token_logp
        loss_sum = sft_loss(logp, 1)
        if not torch.isfinite(loss_sum):
            self._stop(batch)
        self.manual_backward(loss_sum)
        w = self._window
        w["tokens"] += int(count_targets(batch["labels"]))
        w["loss"] += float(loss_sum.detach())
        if self.closes_window(batch_idx):
            self._optimizer_step()

    def _optimizer_step(self) -> None:
        totals = self.trainer.strategy.reduce(
            torch.tensor([self._window["tokens"], self._window["loss"]], dtype=torch.float64, device=self.device),
            reduce_op="sum",
        )
        tokens, loss = max(float(totals[0]), 1.0), float(totals[1]) / max(float(totals[0]), 1.0)
        scale = self.trainer.world_size / tokens  # DDP already averaged over devices
        for p in self.trainable_parameters():
            if p.grad is not None:
                p.grad.mul_(scale)
        grad_norm, lr = self.apply_update()
        self._window = {"tokens": 0, "loss": 0.0}
        self.history["train_loss"].append([self.global_step, loss])
        self.log_dict({"train/loss": loss, "train/grad_norm": grad_norm, "train/lr": lr, "train/tokens": tokens},
                      prog_bar=True, rank_zero_only=True)

    def _stop(self, batch: dict[str, Any]) -> None:
        where = f"{self.checkpoint_dir}/{LAST_GOOD}" if self.checkpoint_dir else "(no checkpoint folder)"
        if self.checkpoint_dir:
            self.trainer.save_checkpoint(where)
        raise TrainingError(
            f"non-finite loss at optimizer step {self.global_step} on records {', '.join(batch['ids'])}. "
            f"The last good state is saved in {where}. Lower sft.lr, check those records' answers, "
            "or use precision 32 to find the cause."
        )

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        logp = answer_logprobs(self.model, batch, self.chunk_size).token_logp
        self._val["tokens"] += int(logp.numel())
        self._val["loss"] += float(-logp.sum())

    def on_validation_epoch_end(self) -> None:
        totals = self.trainer.strategy.reduce(
            torch.tensor([self._val["tokens"], self._val["loss"]], dtype=torch.float64, device=self.device),
            reduce_op="sum",
        )
        self._val = {"tokens": 0, "loss": 0.0}
        if totals[0] > 0:
            loss = float(totals[1] / totals[0])
            self.history["val_loss"].append([self.global_step, loss])
            self.log("val/loss", loss, prog_bar=True, rank_zero_only=True)
