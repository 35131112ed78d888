"""``SFTModule``: supervised fine-tuning with the hand-written token-level loss.

The loss is the mean over every answer token of the accumulation window (on all devices), so
every token weighs the same however the batch is split: each micro-batch gives the *sum* of
its token losses and its token count to ``ManualStepModule``, which scales at the window's end.
Validation reports the same token-weighted mean over the whole validation set.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from cme_vlm.errors import TrainingError
from cme_vlm.models.adapters import ModelAdapter
from cme_vlm.models.head_logprobs import HEAD_CHUNK
from cme_vlm.models.logprobs import answer_logprobs
from cme_vlm.schema import TrainConfig
from cme_vlm.training.losses import sft_loss
from cme_vlm.training.metrics import Float64Mean
from cme_vlm.training.stepping import ManualStepModule

LAST_GOOD = "last-good.ckpt"


class SFTModule(ManualStepModule):
    def __init__(self, model: nn.Module, adapter: ModelAdapter, train: TrainConfig, total_steps: int,
                 checkpoint_dir: str = "", chunk_size: int = HEAD_CHUNK):
        super().__init__(model, train, total_steps, "sft")
        self.adapter, self.checkpoint_dir, self.chunk_size = adapter, checkpoint_dir, chunk_size
        self.history["val_loss"] = []
        self.val_loss = Float64Mean()  # per answer token

    def micro_batch_loss(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
        logp = answer_logprobs(self.model, batch, self.chunk_size).token_logp
        # an explicit dtype: under bf16-true tensors are created in bf16 by default, where 403 reads 404
        return sft_loss(logp, 1), torch.tensor(logp.numel(), dtype=torch.float32, device=logp.device)

    def non_finite(self, loss_sum: Tensor | None, batch: dict[str, Any]) -> TrainingError:
        where = f"{self.checkpoint_dir}/{LAST_GOOD}" if self.checkpoint_dir else "(no checkpoint folder)"
        if self.checkpoint_dir:
            self.trainer.save_checkpoint(where)
        found = (f"non-finite loss ({loss_sum.item()}) at optimizer step {self.global_step} on records "
                 f"{', '.join(batch['ids'])}" if loss_sum is not None else
                 f"another device's loss became non-finite at optimizer step {self.global_step}")
        return TrainingError(
            f"{found}. The last good state is saved in {where}. Lower sft.lr, check those records' answers, "
            "or use precision 32 to find the cause."
        )

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.val_loss.update(-answer_logprobs(self.model, batch, self.chunk_size).token_logp)

    def on_validation_epoch_end(self) -> None:
        if not self.val_loss.update_called:
            return
        loss = self.val_loss.compute()  # synchronised over devices
        self.val_loss.reset()
        self.history["val_loss"].append([self.global_step, float(loss)])
        self.log("val/loss", loss, prog_bar=True, rank_zero_only=True)
