"""The DPO family of preference losses, written by hand as small interchangeable modules.

Every loss takes the policy's answer log-probs of a pair batch (``PairLogps``: summed log-probs
``[B]`` of the accepted ("chosen", ``y_w``) and rejected (``y_l``) answers and their token
counts ``[B]``) and the frozen reference's summed log-probs ``[B]`` of the same answers, and
returns a ``DPOOutput``. Each variant decides which log-probs it is defined on (summed, or
length-averaged for IPO). With those log-probs and the log-ratio difference

    h = (log π_θ(y_w|x) − log π_ref(y_w|x)) − (log π_θ(y_l|x) − log π_ref(y_l|x))

the per-pair losses are

- sigmoid (Rafailov et al. 2023, eq. 7): ``−log σ(β h)``; with label smoothing ``ε`` this is
  conservative DPO (cDPO, Mitchell 2023): ``−(1−ε) log σ(β h) − ε log σ(−β h)``
- robust (rDPO, Chowdhury et al. 2024, eq. 8): ``((1−ε)·(−log σ(β h)) − ε·(−log σ(−β h))) / (1 − 2ε)``
- ipo (Azar et al. 2023, eq. 17): ``(h − 1/(2β))²`` on log-probs divided by each answer's token count
- hinge (SLiC, Zhao et al. 2023): ``max(0, 1 − β h)``

and the implicit rewards are ``r_w = β (log π_θ(y_w|x) − log π_ref(y_w|x))`` and
``r_l = β (log π_θ(y_l|x) − log π_ref(y_l|x))`` on **summed** log-probs for every variant, IPO
included (its loss alone reads length-averaged ones), so the logged ``rewards/*`` (accepted,
rejected, margin ``r_w − r_l``, accuracy ``r_w > r_l``) mean the same whichever loss ran; TRL's
``DPOTrainer`` logs its ``rewards/*`` the same way. An optional SFT term adds
``λ · NLL(y_w)`` (the per-token negative log-likelihood of the accepted answer).

A new variant is one subclass of ``PreferenceLoss`` registered under a name with
``@register_loss("name")``; ``dpo.loss=name`` selects it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cme_vlm.errors import ConfigError
from cme_vlm.models.logprobs import PairLogps
from cme_vlm.schema import DPOConfig


@dataclass
class DPOOutput:
    """``losses``: per pair ``[B]`` (with the SFT term); rewards ``[B]``, detached."""

    losses: Tensor
    accepted_rewards: Tensor
    rejected_rewards: Tensor

    @property
    def loss(self) -> Tensor:
        """The mean over pairs (scalar)."""
        return self.losses.mean()

    @property
    def margin(self) -> Tensor:
        """``r_w − r_l``, shape ``[B]``."""
        return self.accepted_rewards - self.rejected_rewards

    @property
    def correct(self) -> Tensor:
        """``[B]`` float: 1 where the accepted answer earns the higher reward."""
        return (self.accepted_rewards > self.rejected_rewards).float()


class PreferenceLoss(nn.Module):
    """``forward(policy, ref_accepted, ref_rejected) -> DPOOutput``; a subclass writes ``pair_losses(h)``."""

    def __init__(self, beta: float, label_smoothing: float = 0.0, sft_weight: float = 0.0) -> None:
        super().__init__()
        if beta <= 0:
            raise ConfigError(f"dpo.beta={beta} must be positive (0.1 is a common choice).")
        if not 0 <= label_smoothing < 0.5:
            raise ConfigError(f"dpo.label_smoothing={label_smoothing} must lie in [0, 0.5).")
        self.beta, self.label_smoothing, self.sft_weight = beta, label_smoothing, sft_weight

    def logps(self, policy: PairLogps, ref_accepted: Tensor, ref_rejected: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The log-probs the loss (not the rewards) is defined on: summed over each answer's tokens, all ``[B]``."""
        return policy.accepted, policy.rejected, ref_accepted, ref_rejected

    def pair_losses(self, h: Tensor) -> Tensor:
        """The variant's per-pair loss of the log-ratio difference, ``[B]`` → ``[B]``."""
        raise NotImplementedError

    def forward(self, policy: PairLogps, ref_accepted: Tensor, ref_rejected: Tensor) -> DPOOutput:
        ref_accepted, ref_rejected = ref_accepted.to(policy.accepted), ref_rejected.to(policy.rejected)
        losses = self.pair_losses(logratio_difference(*self.logps(policy, ref_accepted, ref_rejected)))
        if self.sft_weight:
            losses = losses + self.sft_weight * (-policy.accepted / policy.accepted_tokens.clamp(min=1))
        rewards = (self.beta * (policy.accepted - ref_accepted), self.beta * (policy.rejected - ref_rejected))
        return DPOOutput(losses, rewards[0].detach(), rewards[1].detach())


def logratio_difference(
    policy_accepted: Tensor, policy_rejected: Tensor, ref_accepted: Tensor, ref_rejected: Tensor
) -> Tensor:
    """``h = (π_w − ref_w) − (π_l − ref_l)`` over log-probs, all ``[B]`` → ``[B]``."""
    return (policy_accepted - ref_accepted) - (policy_rejected - ref_rejected)


LOSSES: dict[str, type[PreferenceLoss]] = {}


def register_loss(name: str) -> Callable[[type[PreferenceLoss]], type[PreferenceLoss]]:
    """Class decorator: make a ``PreferenceLoss`` selectable as ``dpo.loss=<name>``."""
    def add(cls: type[PreferenceLoss]) -> type[PreferenceLoss]:
        LOSSES[name] = cls
        return cls

    return add


def build_loss(cfg: DPOConfig) -> PreferenceLoss:
    """The loss ``dpo.loss`` names, with ``dpo.beta``, ``dpo.label_smoothing`` and ``dpo.sft_weight``."""
    if cfg.loss not in LOSSES:
        raise ConfigError(f"dpo.loss='{cfg.loss}' is not a registered preference loss. Choose one of "
                          f"{', '.join(sorted(LOSSES))}, or register a class with cme_vlm.training.dpo_losses.register_loss.")
    return LOSSES[cfg.loss](cfg.beta, cfg.label_smoothing, cfg.sft_weight)


@register_loss("sigmoid")
class SigmoidLoss(PreferenceLoss):
    """DPO / cDPO: ``−(1−ε) log σ(βh) − ε log σ(−βh)``."""

    def pair_losses(self, h: Tensor) -> Tensor:
        eps = self.label_smoothing
        return -(1 - eps) * F.logsigmoid(self.beta * h) - eps * F.logsigmoid(-self.beta * h)


@register_loss("robust")
class RobustLoss(PreferenceLoss):
    """rDPO, unbiased under preference flips with rate ``ε < 0.5``."""

    def pair_losses(self, h: Tensor) -> Tensor:
        eps = self.label_smoothing
        flipped = -(1 - eps) * F.logsigmoid(self.beta * h) + eps * F.logsigmoid(-self.beta * h)
        return flipped / (1 - 2 * eps)


@register_loss("ipo")
class IPOLoss(PreferenceLoss):
    """IPO: ``(h − 1/(2β))²`` on length-averaged log-probs ``log π(y|x) / |y|`` (the rewards stay summed)."""

    def logps(self, policy: PairLogps, ref_accepted: Tensor, ref_rejected: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        na, nr = policy.accepted_tokens.clamp(min=1), policy.rejected_tokens.clamp(min=1)
        return policy.accepted / na, policy.rejected / nr, ref_accepted / na, ref_rejected / nr

    def pair_losses(self, h: Tensor) -> Tensor:
        return (h - 1 / (2 * self.beta)) ** 2


@register_loss("hinge")
class HingeLoss(PreferenceLoss):
    """SLiC hinge: ``max(0, 1 − βh)``."""

    def pair_losses(self, h: Tensor) -> Tensor:
        return torch.relu(1 - self.beta * h)
