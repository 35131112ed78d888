"""``DPOModule``: direct preference optimisation of the VLM with the hand-written losses.

Each step runs the accepted and rejected answers of ``B`` pairs as one ``2B``-sequence forward
pass with each image encoded once (``cme_vlm.preference.pairs.pair_logprobs``). The reference
log-probs come from the batch (precomputed, no reference model held), a frozen in-memory copy,
or the LoRA policy with its adapters disabled (``cme_vlm.preference.reference``).
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from cme_vlm.errors import TrainingError
from cme_vlm.preference.pairs import PairLogps, pair_logprobs
from cme_vlm.preference.reference import InMemoryReference, Reference
from cme_vlm.schema import DPOConfig, DPOLoss
from cme_vlm.training.dpo_losses import DPOOutput, dpo_loss
from cme_vlm.training.logprobs import hf_model
from cme_vlm.training.optim import build_optimizer, warmup_cosine


class DPOModule(L.LightningModule):
    """The policy, its reference and the DPO objective; logs rewards, margin, accuracy and log-probs."""

    def __init__(self, model: nn.Module, cfg: DPOConfig, reference: Reference, total_steps: int) -> None:
        super().__init__()
        self.model = model
        self.cfg = cfg
        self.reference = reference
        # registered so Lightning moves it with the policy; frozen, so the optimizer never sees it
        self.reference_model = reference.model if isinstance(reference, InMemoryReference) else None
        self.total_steps = total_steps
        # manual optimisation: the SFT stage's trainer leaves accumulation and clipping to the module
        self.automatic_optimization = False
        self.history: dict[str, list] = {"train_loss": []}
        if cfg.gradient_checkpointing:
            hf_model(model).gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    def pair_output(self, batch: dict[str, Any]) -> tuple[DPOOutput, PairLogps]:
        """The loss and rewards of one pair batch, and the policy's log-probs."""
        policy = pair_logprobs(self.model, batch)
        ref_accepted, ref_rejected = self.reference.logps(batch)
        pa, pr = policy.accepted, policy.rejected
        ra, rr = ref_accepted.to(pa), ref_rejected.to(pr)
        if DPOLoss(self.cfg.loss) is DPOLoss.ipo:  # IPO is defined on length-averaged log-probs
            na, nr = policy.accepted_tokens.clamp(min=1), policy.rejected_tokens.clamp(min=1)
            pa, pr, ra, rr = pa / na, pr / nr, ra / na, rr / nr
        nll = -policy.accepted / policy.accepted_tokens.clamp(min=1) if self.cfg.sft_weight else None
        out = dpo_loss(pa, pr, ra, rr, self.cfg.beta, self.cfg.loss, self.cfg.label_smoothing, self.cfg.sft_weight, nll)
        return out, policy

    def _step(self, batch: dict[str, Any], stage: str) -> Tensor:
        out, policy = self.pair_output(batch)
        if not torch.isfinite(out.loss):
            raise TrainingError(
                f"the DPO loss became {out.loss.item()} at step {self.global_step}. Lower dpo.lr or dpo.beta, "
                "or use precision 32 to find the cause."
            )
        size = len(batch["ids"])
        metrics = {
            "loss": out.loss.detach(),
            "rewards/accepted": out.accepted_rewards.mean(),
            "rewards/rejected": out.rejected_rewards.mean(),
            "rewards/margin": out.margin.mean(),
            "rewards/accuracy": out.accuracy,
            "logps/accepted": policy.accepted.detach().mean(),
            "logps/rejected": policy.rejected.detach().mean(),
        }
        self.log_dict({f"{stage}/{k}": v for k, v in metrics.items()}, batch_size=size, prog_bar=False,
                      on_step=stage == "train", on_epoch=True, sync_dist=stage != "train")
        self.log(f"{stage}/reward_acc", out.accuracy, batch_size=size, prog_bar=True, on_step=stage == "train")
        return out.loss

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        loss = self._step(batch, "train")
        self.manual_backward(loss / self.cfg.grad_accum)
        # windows follow the batch's place in the epoch, so a run resumed at a step lines them up the same way
        if (batch_idx + 1) % self.cfg.grad_accum == 0 or batch_idx + 1 == self.trainer.num_training_batches:
            self._optimizer_step(float(loss.detach()))

    def _optimizer_step(self, loss: float) -> None:
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        params = self.trainable_parameters()
        clip = self.cfg.grad_clip if self.cfg.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(params, clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        self.history["train_loss"].append([self.global_step, loss])
        self.log_dict({"train/grad_norm": float(grad_norm), "train/lr": scheduler.get_last_lr()[0]}, rank_zero_only=True)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        return self._step(batch, "val")

    def configure_optimizers(self) -> dict[str, Any]:
        params = self.trainable_parameters()
        if not params:
            raise TrainingError("dpo.freezing leaves no trainable parameter; set a component to train or lora.")
        optimizer = build_optimizer(params, self.cfg)
        scheduler = warmup_cosine(optimizer, self.total_steps, self.cfg.warmup_ratio, self.cfg.min_lr_ratio)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


@torch.no_grad()
def pair_metrics(module: DPOModule, batches: Any) -> dict[str, float]:
    """Reward accuracy, margin and loss of the module over an iterable of pair batches (eval mode)."""
    was_training = module.training
    module.eval()
    correct = total = 0
    margin = loss = 0.0
    for batch in batches:
        batch = {k: v.to(module.device) if isinstance(v, Tensor) else v for k, v in batch.items()}
        out, _ = module.pair_output(batch)
        n = out.losses.shape[0]
        correct += int((out.margin > 0).sum())
        total += n
        margin += float(out.margin.sum())
        loss += float(out.losses.sum())
    module.train(was_training)
    return {"pairs": total, "reward_accuracy": correct / max(total, 1), "reward_margin": margin / max(total, 1),
            "loss": loss / max(total, 1)}
