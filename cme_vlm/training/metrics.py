"""``Float64Mean``: a weighted running mean as a torchmetrics ``Metric``, kept in float64 under bf16 training.

Lightning casts a module for ``bf16-true`` with ``module.to(dtype=bfloat16)``, and torchmetrics
lets that cast reach a metric's states: a bf16 running sum stops growing after a few hundred
tokens, so this metric follows the module's device but keeps its dtype. (torchmetrics'
``MeanMetric`` would also need its NaN check, a value read back every update, to keep weights.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torchmetrics import Metric


class Float64Mean(Metric):
    """``Σ w·x / Σ w`` over every update, summed over devices when computed."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("weight", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, value: Tensor, weight: Tensor | None = None) -> None:
        """``value``: any shape; ``weight``: broadcastable to it (default 1 for every element)."""
        value = value.detach().to(torch.float64)
        # out of place: a state reset during validation is an inference tensor, which training may not change in place
        if weight is None:
            self.total = self.total + value.sum()
            self.weight = self.weight + value.numel()
            return
        weight = torch.broadcast_to(weight.detach().to(value), value.shape)
        self.total = self.total + (value * weight).sum()
        self.weight = self.weight + weight.sum()

    def compute(self) -> Tensor:
        return self.total / self.weight

    def _apply(self, fn: Callable[[Tensor], Tensor], exclude_state: Sequence[str] = "") -> nn.Module:
        return super()._apply(lambda t: fn(t).to(t.dtype), exclude_state)
