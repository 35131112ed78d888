"""The precision a training stage runs at, as a Lightning precision plugin that keeps exact what must stay exact.

``precision: auto`` resolves by the optimizer: on a CUDA GPU ``kahan_adamw`` trains bf16 weights
(``bf16-true``, the Kahan sum keeps the small updates bf16 would drop) and ``adamw`` trains
float32 weights under bf16 autocast (``bf16-mixed``); without a GPU it is ``32-true``. Plain AdamW
on half-precision weights (``bf16-true``/``16-true`` with ``optimizer: adamw``) is refused: at
lr 1e-6 it drops most updates (``tests/training/test_optim.py``).

Lightning's own plugins would lose precision in three places, which these plugins keep:

- ``bf16-true`` casts every floating tensor of a batch: the precomputed reference log-probs
  (float64, e.g. −300.7) would become −300.0, a log-ratio off by 1–2 nats before any update.
  Float64 batch values are left alone; model inputs (pixels) arrive float32 and are cast.
- ``bf16-true`` casts the module with ``module.to``, rounding the rotary frequencies that
  ``from_pretrained`` keeps float32 (``cme_vlm.models.dtypes``): the trained module would attend by
  other positions than its own export reloaded.
- ``bf16-mixed`` and ``32-true`` train whatever dtype the weights were loaded in
  (``model.dtype: auto`` is bf16 on a GPU): the plugins make the trained weights float32.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.fabric.connector import _convert_precision_to_unified_args
from lightning.pytorch.plugins.precision import DoublePrecision, HalfPrecision, MixedPrecision, Precision
from lightning_utilities import apply_to_collection
from torch import Tensor, nn

from cme_vlm.errors import ConfigError
from cme_vlm.models.dtypes import cast_floating
from cme_vlm.schema import Optimizer, TrainConfig

HALF_WEIGHTS = {"bf16-true": torch.bfloat16, "16-true": torch.float16}


def on_gpu(train: TrainConfig) -> bool:
    """Whether the stage trains on a CUDA GPU (``accelerator`` auto, gpu or cuda, and one is present)."""
    return train.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()


def resolve_precision(train: TrainConfig, stage: str, gpu: bool | None = None) -> str:
    """Lightning's name of the precision ``<stage>.precision`` means (``auto`` resolved, aliases unified).

    ``gpu``: whether the stage trains on a GPU; by default, whether it would here (``on_gpu``).
    """
    if train.precision == "auto":
        if not (on_gpu(train) if gpu is None else gpu):
            return "32-true"
        return "bf16-true" if Optimizer(train.optimizer) is Optimizer.kahan_adamw else "bf16-mixed"
    try:
        name = _convert_precision_to_unified_args(train.precision)
    except ValueError as e:
        raise ConfigError(f"{stage}.precision={train.precision!r}: {e}") from None
    if name in HALF_WEIGHTS and Optimizer(train.optimizer) is Optimizer.adamw:
        raise ConfigError(
            f"{stage}.precision={name} with {stage}.optimizer=adamw trains half-precision weights with plain AdamW, "
            f"which drops every update smaller than about |w|·2^-9 (most of them at small learning rates). Set "
            f"{stage}.optimizer=kahan_adamw (bf16 weights, compensated updates) or {stage}.precision=bf16-mixed "
            "(float32 weights)."
        )
    return name


class HalfWeightsPrecision(HalfPrecision):
    """``bf16-true``/``16-true``: the module cast with its rotary frequencies float32; float64 batch values kept."""

    def convert_module(self, module: nn.Module) -> nn.Module:
        return cast_floating(module, self._desired_input_dtype)

    def convert_input(self, data: Any) -> Any:
        return apply_to_collection(data, Tensor, self._cast_input)

    def _cast_input(self, tensor: Tensor) -> Tensor:
        if tensor.is_floating_point() and tensor.dtype != torch.float64:
            return tensor.to(self._desired_input_dtype)
        return tensor


class Float32Weights:
    """Mixin: the trained weights float32 whatever dtype they were loaded in (autocast computes in half)."""

    def convert_module(self, module: nn.Module) -> nn.Module:
        return cast_floating(module, torch.float32)


class MixedFloat32Precision(Float32Weights, MixedPrecision):
    """``bf16-mixed`` over float32 weights."""


class Float32Precision(Float32Weights, Precision):
    """``32-true`` over float32 weights."""


def precision_plugin(train: TrainConfig, stage: str) -> Precision:
    """The plugin of ``resolve_precision``."""
    name = resolve_precision(train, stage)
    if name in HALF_WEIGHTS:
        return HalfWeightsPrecision(name)
    if name == "bf16-mixed":
        return MixedFloat32Precision(name, "cuda" if on_gpu(train) else "cpu")
    if name == "32-true":
        return Float32Precision()
    if name == "64-true":
        return DoublePrecision()
    # 16-mixed scales the loss (GradScaler), but the manual step scales, clips and steps the gradients itself
    raise ConfigError(f"{stage}.precision={train.precision} is not one this project trains with. Use auto, 32-true, "
                      "bf16-mixed, bf16-true or 16-true (both with optimizer=kahan_adamw), or 64-true.")
