"""The DPO family of preference losses, written by hand as pure functions over log-probs.

All functions take the summed (or, for IPO, length-averaged) log-probs of the accepted
("chosen", ``y_w``) and rejected (``y_l``) answers under the policy ``π_θ`` and the frozen
reference ``π_ref``, each a tensor of shape ``[B]``. With the log-ratio difference

    h = (log π_θ(y_w|x) − log π_ref(y_w|x)) − (log π_θ(y_l|x) − log π_ref(y_l|x))

the per-pair losses are

- sigmoid (Rafailov et al. 2023, eq. 7): ``−log σ(β h)``; with label smoothing ``ε`` this is
  conservative DPO (cDPO, Mitchell 2023): ``−(1−ε) log σ(β h) − ε log σ(−β h)``
- robust (rDPO, Chowdhury et al. 2024, eq. 8): ``((1−ε)·(−log σ(β h)) − ε·(−log σ(−β h))) / (1 − 2ε)``
- ipo (Azar et al. 2023, eq. 17): ``(h − 1/(2β))²``
- hinge (SLiC, Zhao et al. 2023): ``max(0, 1 − β h)``

and the implicit rewards are ``r_w = β (log π_θ(y_w|x) − log π_ref(y_w|x))`` and
``r_l = β (log π_θ(y_l|x) − log π_ref(y_l|x))``. An optional SFT term adds
``λ · NLL(y_w)`` (the per-token negative log-likelihood of the accepted answer).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from cme_vlm.errors import ConfigError
from cme_vlm.schema import DPOLoss


@dataclass
class DPOOutput:
    """``loss``: scalar mean over pairs; ``losses``: ``[B]``; rewards ``[B]``, detached."""

    loss: Tensor
    losses: Tensor
    accepted_rewards: Tensor
    rejected_rewards: Tensor

    @property
    def margin(self) -> Tensor:
        """``r_w − r_l``, shape ``[B]``."""
        return self.accepted_rewards - self.rejected_rewards

    @property
    def accuracy(self) -> Tensor:
        """Share of pairs whose accepted answer earns the higher reward (scalar)."""
        return (self.accepted_rewards > self.rejected_rewards).float().mean()


def logratio_difference(
    policy_accepted: Tensor, policy_rejected: Tensor, ref_accepted: Tensor, ref_rejected: Tensor
) -> Tensor:
    """``h = (π_w − ref_w) − (π_l − ref_l)`` over log-probs, all ``[B]`` → ``[B]``."""
    return (policy_accepted - ref_accepted) - (policy_rejected - ref_rejected)


def sigmoid_loss(h: Tensor, beta: float, label_smoothing: float = 0.0) -> Tensor:
    """DPO / cDPO: ``−(1−ε) log σ(βh) − ε log σ(−βh)``, ``[B]`` → ``[B]``."""
    return -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)


def robust_loss(h: Tensor, beta: float, label_smoothing: float) -> Tensor:
    """rDPO, unbiased under preference flips with rate ``ε < 0.5``, ``[B]`` → ``[B]``."""
    flipped = -(1 - label_smoothing) * F.logsigmoid(beta * h) + label_smoothing * F.logsigmoid(-beta * h)
    return flipped / (1 - 2 * label_smoothing)


def ipo_loss(h: Tensor, beta: float) -> Tensor:
    """IPO: ``(h − 1/(2β))²``, ``[B]`` → ``[B]``; expects length-averaged log-probs."""
    return (h - 1 / (2 * beta)) ** 2


def hinge_loss(h: Tensor, beta: float) -> Tensor:
    """SLiC hinge: ``max(0, 1 − βh)``, ``[B]`` → ``[B]``."""
    return torch.relu(1 - beta * h)


def dpo_loss(
    policy_accepted: Tensor,
    policy_rejected: Tensor,
    ref_accepted: Tensor,
    ref_rejected: Tensor,
    beta: float,
    loss: DPOLoss = DPOLoss.sigmoid,
    label_smoothing: float = 0.0,
    sft_weight: float = 0.0,
    accepted_nll: Tensor | None = None,
) -> DPOOutput:
    """The configured preference loss plus ``sft_weight · accepted_nll``; every tensor ``[B]``.

    ``accepted_nll`` is the per-token negative log-likelihood of each accepted answer under the
    policy; it is required when ``sft_weight > 0``.
    """
    if beta <= 0:
        raise ConfigError(f"dpo.beta={beta} must be positive (the paper uses 0.1).")
    if not 0 <= label_smoothing < 0.5:
        raise ConfigError(f"dpo.label_smoothing={label_smoothing} must lie in [0, 0.5).")
    h = logratio_difference(policy_accepted, policy_rejected, ref_accepted, ref_rejected)
    loss = DPOLoss(loss)
    if loss is DPOLoss.sigmoid:
        losses = sigmoid_loss(h, beta, label_smoothing)
    elif loss is DPOLoss.robust:
        losses = robust_loss(h, beta, label_smoothing)
    elif loss is DPOLoss.ipo:
        losses = ipo_loss(h, beta)
    else:
        losses = hinge_loss(h, beta)
    if sft_weight:
        if accepted_nll is None:
            raise ValueError("dpo_loss: sft_weight > 0 needs accepted_nll, the accepted answers' per-token NLL")
        losses = losses + sft_weight * accepted_nll
    return DPOOutput(
        loss=losses.mean(),
        losses=losses,
        accepted_rewards=(beta * (policy_accepted - ref_accepted)).detach(),
        rejected_rewards=(beta * (policy_rejected - ref_rejected)).detach(),
    )

