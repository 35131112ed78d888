"""The optimizer of a training stage: per-component parameter groups, AdamW or optimi's Kahan AdamW, the schedule.

``optimizer: adamw`` is torch's AdamW (fused on GPU) for float32 weights. ``kahan_adamw`` is
``optimi.AdamW`` with Kahan summation: in bf16 a weight of magnitude ``w`` moves only if the
update exceeds about ``|w| · 2^-9``, so at lr 1e-6 plain AdamW silently drops most updates;
Kahan summation keeps what rounding lost in a bf16 compensation buffer and adds it back on the
next step, so bf16 weights follow the float32 trajectory (tests/training/test_optim.py) with
weights, moments and compensation all in bf16 (8 bytes a trained parameter, no float32 copy).
On float32 weights it is plain AdamW. On a CUDA card it steps plain (unsharded) parameters with
optimi's fused Triton kernels (``triton_kernels``).

``gradient_release: true`` (``kahan_adamw`` only) fuses each parameter's update into the
backward pass (optimi's post-accumulate-grad hooks) and frees its gradient at once, so no
full set of gradients ever exists; accumulation windows then accumulate into the optimizer
states (optimi's ``optimizer_accumulation``), see ``cme_vlm.training.stepping``.
"""

from __future__ import annotations

import math
from typing import Any

import optimi
import torch
from optimi import utils as optimi_utils
from torch import Tensor, nn
from torch.distributed.tensor import DTensor
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from cme_vlm.errors import ConfigError
from cme_vlm.models.adapters import COMPONENTS, ModelAdapter
from cme_vlm.schema import Optimizer as OptimizerName
from cme_vlm.schema import TrainConfig

# torch.optim.AdamW's defaults; optimi's own (betas 0.9/0.99, eps 1e-6) would change the update rule
BETAS, EPS = (0.9, 0.999), 1e-8


def parameter_groups(model: nn.Module, adapter: ModelAdapter, train: TrainConfig, stage: str) -> list[dict[str, Any]]:
    """One group per component with trainable parameters, at ``lr · lr_scale.<component>``."""
    members: dict[str, list[nn.Parameter]] = {c: [] for c in COMPONENTS}
    for name, param in model.named_parameters():
        if param.requires_grad:
            members[adapter.component_of(name)].append(param)
    groups = []
    for component, params in members.items():
        scale = getattr(train.lr_scale, component)
        if scale < 0:
            raise ConfigError(f"{stage}.lr_scale.{component}={scale} must be 0 or more (1 keeps {stage}.lr).")
        if params:
            groups.append({"params": params, "lr": train.lr * scale, "name": component})
    return groups


def build_optimizer(groups: list[dict[str, Any]], train: TrainConfig, stage: str) -> Optimizer:
    """``optimizer: adamw`` (torch's, fused on GPU) or ``kahan_adamw`` (optimi, with gradient release if asked)."""
    if OptimizerName(train.optimizer) is OptimizerName.kahan_adamw:
        optimizer = optimi.AdamW(groups, lr=train.lr, betas=BETAS, eps=EPS, weight_decay=train.weight_decay,
                                 kahan_sum=True, gradient_release=train.gradient_release,
                                 triton=triton_kernels([p for g in groups for p in g["params"]]))
        if train.gradient_release:
            _keep_groups_out_of_checkpoints(optimizer)
        return optimizer
    if train.gradient_release:
        raise ConfigError(f"{stage}.gradient_release=true needs {stage}.optimizer=kahan_adamw (optimi's optimizers "
                          "step in the backward pass; torch's AdamW does not).")
    params = [p for g in groups for p in g["params"]]
    fused = all(p.is_cuda for p in params) and bool(params)
    return torch.optim.AdamW(groups, lr=train.lr, betas=BETAS, eps=EPS, weight_decay=train.weight_decay,
                             fused=fused or None)


def triton_kernels(params: list[Tensor]) -> bool:
    """Whether optimi steps ``params`` with its fused Triton kernels: plain CUDA tensors (bf16-capable card, Triton
    importable), never sharded ones.

    Left to itself optimi never picks Triton here and once picks it wrongly: it chooses only when
    ``foreach`` is unset, which gradient release sets to False; it accepts only the exact types in
    torch's foreach list (``torch.Tensor``, not ``nn.Parameter``); and importing
    ``torch.distributed.tensor`` adds ``DTensor`` to that list, so under FSDP it would launch its
    kernel on a DTensor (a shard's ``data_ptr()`` with the global element count: an illegal memory access).
    """
    return optimi_utils.HAS_TRITON and bool(params) and all(
        not isinstance(p, DTensor) and p.is_floating_point() and optimi_utils._triton_kernels_supported_device(p)
        for p in params
    )


def _keep_groups_out_of_checkpoints(optimizer: Optimizer) -> None:
    """optimi's gradient release keeps a link to each parameter's group in its state: drop it when saving, relink on load.

    Saved as is, the link would copy every group (with its parameters) into the checkpoint, and a
    loaded copy would leave the hooks reading a group the scheduler no longer updates.
    """
    def drop(_optimizer: Optimizer, state_dict: dict[str, Any]) -> dict[str, Any]:
        state_dict["state"] = {k: {n: v for n, v in s.items() if n != "group"} for k, s in state_dict["state"].items()}
        return state_dict

    optimizer.register_state_dict_post_hook(drop)
    optimizer.register_load_state_dict_pre_hook(drop)
    optimizer.register_load_state_dict_post_hook(relink_groups)


def relink_groups(optimizer: Optimizer) -> None:
    """Point each parameter's state at its live group again (after a load, or a copy of the state such as
    Lightning's move of the optimizer to its device, which copies nested dicts)."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            optimizer.state[p]["group"] = group


def warmup_cosine(optimizer: Optimizer, total_steps: int, warmup_ratio: float, min_lr_ratio: float) -> LambdaLR:
    """Linear warm-up over ``warmup_ratio · total_steps``, then cosine decay to ``min_lr_ratio · lr`` (every group)."""
    warmup = max(1, math.ceil(warmup_ratio * total_steps)) if warmup_ratio > 0 else 0

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)
