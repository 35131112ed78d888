"""``DPOModule``: direct preference optimisation of the VLM with a hand-written preference loss.

Each step runs the accepted and rejected answers of ``B`` pairs as one ``2B``-sequence forward
pass with each image encoded once (``cme_vlm.models.logprobs.pair_logprobs``). The reference
log-probs come from the batch (precomputed, no reference model held), a frozen in-memory copy,
or the LoRA policy with its adapters disabled (``cme_vlm.training.reference``). The loss is the
``PreferenceLoss`` that ``dpo.loss`` names; the step does not know which variant runs.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from cme_vlm.errors import TrainingError
from cme_vlm.models.logprobs import PairLogps, pair_logprobs
from cme_vlm.schema import DPOConfig
from cme_vlm.training.dpo_losses import DPOOutput, build_loss
from cme_vlm.training.metrics import Float64Mean
from cme_vlm.training.reference import InMemoryReference, Reference
from cme_vlm.training.stepping import ManualStepModule

# rewards/*: β · summed log-ratio of the answer (accepted, rejected), their difference (margin) and whether it is
# positive (accuracy), whichever loss ran (cme_vlm.training.dpo_losses); logps/*: summed policy log-probs
REWARDS = ("rewards/accepted", "rewards/rejected", "rewards/margin", "rewards/accuracy", "logps/accepted",
           "logps/rejected")
FIGURES = {"train": REWARDS, "val": ("loss", *REWARDS)}  # the train loss is ManualStepModule's


def pair_figures(out: DPOOutput, policy: PairLogps) -> dict[str, Tensor]:
    """Every logged figure of a pair batch, one value per pair ``[B]``."""
    return {"loss": out.losses.detach(), "rewards/accepted": out.accepted_rewards,
            "rewards/rejected": out.rejected_rewards, "rewards/margin": out.margin, "rewards/accuracy": out.correct,
            "logps/accepted": policy.accepted.detach(), "logps/rejected": policy.rejected.detach()}


class DPOModule(ManualStepModule):
    """The policy, its reference and the preference loss; logs loss, rewards, margin, accuracy and log-probs per pair."""

    model_calls = ("pair_output",)  # training, validation and the pair report all run the model through it

    def __init__(self, model: nn.Module, cfg: DPOConfig, reference: Reference, total_steps: int) -> None:
        super().__init__(model, cfg, total_steps, "dpo")
        self.cfg = cfg
        self.loss_fn = build_loss(cfg)
        self.reference = reference
        # registered so Lightning moves it with the policy; frozen, so the optimizer never sees it
        self.reference_model = reference.model if isinstance(reference, InMemoryReference) else None
        # means over pairs (train: the accumulation window; val: the validation set), synchronised over devices
        self.figures = nn.ModuleDict({f"{split}/{name}": Float64Mean() for split, names in FIGURES.items() for name in names})
        self.history["train_margin"] = []  # the window's mean reward margin after each optimizer step

    def pair_output(self, batch: dict[str, Any]) -> tuple[DPOOutput, PairLogps]:
        """The loss and rewards of one pair batch, and the policy's log-probs."""
        policy = pair_logprobs(self.model, batch)
        return self.loss_fn(policy, *self.reference.logps(batch)), policy

    def micro_batch_loss(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
        out, policy = self.pair_output(batch)
        self._update("train", out, policy)
        return out.losses.sum(), torch.tensor(out.losses.numel(), dtype=torch.float32, device=out.losses.device)

    def non_finite(self, loss_sum: Tensor | None, batch: dict[str, Any]) -> TrainingError:
        found = (f"the DPO loss became {loss_sum.item()} at step {self.global_step} on pairs {', '.join(batch['ids'])}"
                 if loss_sum is not None else f"another device's DPO loss became non-finite at step {self.global_step}")
        return TrainingError(f"{found}. Lower dpo.lr or dpo.beta, or use precision 32 to find the cause.")

    def window_logs(self) -> dict[str, Tensor]:
        logs = {f"train/{name}": value for name, value in self._compute("train").items()}
        self.history["train_margin"].append([self.global_step, float(logs["train/rewards/margin"])])
        return logs

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._update("val", *self.pair_output(batch))

    def on_validation_epoch_end(self) -> None:
        if self.figures["val/loss"].update_called:
            self.log_dict({f"val/{name}": value for name, value in self._compute("val").items()}, rank_zero_only=True)

    def _update(self, split: str, out: DPOOutput, policy: PairLogps) -> None:
        values = pair_figures(out, policy)
        for name in FIGURES[split]:
            self.figures[f"{split}/{name}"].update(values[name])

    def _compute(self, split: str) -> dict[str, Tensor]:
        """Each figure's mean since the last reset (synchronised over devices), then reset."""
        means = {}
        for name in FIGURES[split]:
            metric = self.figures[f"{split}/{name}"]
            means[name] = metric.compute()
            metric.reset()
        return means


@torch.no_grad()
def pair_metrics(module: DPOModule, batches: Any, device: torch.device | None = None) -> dict[str, float]:
    """Reward accuracy, margin and loss of the module over an iterable of pair batches (eval mode), on ``device``."""
    was_training = module.training
    if device is not None:
        module.to(device)
    module.eval()
    sums = {"correct": 0.0, "margin": 0.0, "loss": 0.0}
    total = 0
    for batch in batches:
        batch = {k: v.to(module.device) if isinstance(v, Tensor) else v for k, v in batch.items()}
        out, _ = module.pair_output(batch)
        total += out.losses.shape[0]
        for name, values in (("correct", out.correct), ("margin", out.margin), ("loss", out.losses)):
            sums[name] += float(values.sum())
    module.train(was_training)
    return {"pairs": total, "reward_accuracy": sums["correct"] / max(total, 1),
            "reward_margin": sums["margin"] / max(total, 1), "loss": sums["loss"] / max(total, 1)}
