"""``DPOModule``: direct preference optimisation of the VLM with the hand-written losses.

Each step runs the accepted and rejected answers of ``B`` pairs as one ``2B``-sequence forward
pass with each image encoded once (``cme_vlm.preference.pairs.pair_logprobs``). The reference
log-probs come from the batch (precomputed, no reference model held), a frozen in-memory copy,
or the LoRA policy with its adapters disabled (``cme_vlm.preference.reference``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from cme_vlm.errors import TrainingError
from cme_vlm.preference.pairs import PairLogps, pair_logprobs
from cme_vlm.preference.reference import InMemoryReference, Reference
from cme_vlm.schema import DPOConfig, DPOLoss
from cme_vlm.training.dpo_losses import DPOOutput, dpo_loss
from cme_vlm.training.stepping import ManualStepModule


class DPOModule(ManualStepModule):
    """The policy, its reference and the DPO objective; logs rewards, margin, accuracy and log-probs."""

    def __init__(self, model: nn.Module, cfg: DPOConfig, reference: Reference, total_steps: int) -> None:
        super().__init__(model, cfg, total_steps, "dpo")
        self.cfg = cfg
        self.reference = reference
        # registered so Lightning moves it with the policy; frozen, so the optimizer never sees it
        self.reference_model = reference.model if isinstance(reference, InMemoryReference) else None
        self.history: dict[str, list] = {"train_loss": []}

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

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        loss = self._step(batch, "train")
        self.manual_backward(loss / self.cfg.grad_accum)
        if self.closes_window(batch_idx):
            grad_norm, lr = self.apply_update()
            self.history["train_loss"].append([self.global_step, float(loss.detach())])
            self.log_dict({"train/grad_norm": grad_norm, "train/lr": lr}, rank_zero_only=True)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        return self._step(batch, "val")



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
