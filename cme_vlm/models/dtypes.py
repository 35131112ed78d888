"""Casting a model to another floating dtype as ``from_pretrained(dtype=...)`` leaves it: rotary frequencies float32.

transformers computes every rotary embedding's frequencies (``inv_freq``, ``original_inv_freq``) in
float32 and ``from_pretrained`` keeps them so whatever the weights' dtype; a plain ``module.to(bf16)``
rounds them too. At rope theta 1e6 the rounded frequencies move the angle of position 575 by up to
0.66 rad, so a model cast that way attends by other positions than the same weights loaded from disk.
"""

from __future__ import annotations

import torch
from torch import nn

# transformers' rotary modules are named so: Qwen2_5_VLRotaryEmbedding, Qwen2_5_VisionRotaryEmbedding, ...
ROTARY_MODULE = "RotaryEmbedding"


def rotary_buffers(module: nn.Module) -> dict[tuple[nn.Module, str], torch.Tensor]:
    """Every floating buffer of every rotary-embedding module inside ``module``, keyed by (owner, name)."""
    return {
        (owner, name): buffer
        for owner in module.modules() if ROTARY_MODULE in type(owner).__name__
        for name, buffer in owner.named_buffers(recurse=False) if buffer.is_floating_point()
    }


def cast_floating(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """``module.to(dtype)`` in place, the rotary buffers kept as they were (float32, as transformers builds them)."""
    kept = rotary_buffers(module)
    module.to(dtype=dtype)
    for (owner, name), buffer in kept.items():
        setattr(owner, name, buffer.to(device=getattr(owner, name).device))
    return module
