"""AdamW with warm-up and cosine decay, and a Kahan-compensated AdamW for bf16 weights.

In bf16 a weight of magnitude ``w`` moves only if the update exceeds about ``|w| · 2^-9``;
at lr 1e-6 most updates fall below that and plain AdamW silently drops them. Kahan summation
keeps the part of each update that rounding lost in a per-weight compensation buffer and adds
it back on the next step, so the weights follow the float32 trajectory.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from cme_vlm.schema import Optimizer as OptimizerName
from cme_vlm.schema import TrainConfig


class KahanAdamW(Optimizer):
    """AdamW (decoupled weight decay) whose parameter update is Kahan-compensated.

    Moments and compensation live in the parameter's dtype (bf16 keeps memory at 3 extra
    copies); the arithmetic of each step is done in float32.
    """

    def __init__(self, params: Iterable[Tensor], lr: float = 1e-5, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001 - torch's signature
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self._update(p, group)
        return loss

    def _update(self, p: Tensor, group: dict) -> None:
        state = self.state[p]
        if not state:
            state["step"] = 0
            for key in ("exp_avg", "exp_avg_sq", "compensation"):
                state[key] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["step"] += 1
        beta1, beta2 = group["betas"]
        grad = p.grad.float()
        m = state["exp_avg"].float().lerp_(grad, 1 - beta1)
        v = state["exp_avg_sq"].float().mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        state["exp_avg"].copy_(m)
        state["exp_avg_sq"].copy_(v)
        step = state["step"]
        denom = (v / (1 - beta2**step)).sqrt_().add_(group["eps"])
        old = p.to(torch.float32, copy=True)
        delta = -group["lr"] * (m / (1 - beta1**step) / denom + group["weight_decay"] * old)
        wanted = delta + state["compensation"].float()
        p.copy_(old + wanted)
        state["compensation"].copy_(wanted - (p.float() - old))


def build_optimizer(params: list[Tensor], train: TrainConfig) -> Optimizer:
    """``optimizer: adamw`` (torch's, fused on GPU) or ``kahan_adamw``."""
    if OptimizerName(train.optimizer) == OptimizerName.kahan_adamw:
        return KahanAdamW(params, lr=train.lr, weight_decay=train.weight_decay)
    fused = all(p.is_cuda for p in params) and bool(params)
    return torch.optim.AdamW(params, lr=train.lr, weight_decay=train.weight_decay, fused=fused or None)


def warmup_cosine(optimizer: Optimizer, total_steps: int, warmup_ratio: float, min_lr_ratio: float) -> LambdaLR:
    """Linear warm-up over ``warmup_ratio · total_steps``, then cosine decay to ``min_lr_ratio · lr``."""
    warmup = max(1, math.ceil(warmup_ratio * total_steps)) if warmup_ratio > 0 else 0

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)
