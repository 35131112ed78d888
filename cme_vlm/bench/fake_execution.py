"""Run the project's real training code on fake tensors: shapes, dtypes and devices, no storage.

torch's ``FakeTensorMode`` runs every operator's shape logic without allocating, so a 7B step
runs on a CPU with a few GB. A vision-language forward pass, though, reads values: Qwen2.5-VL
builds its rotary position ids, window indices and image-token masks from the token ids and the
image grid in Python, and the loss gathers the answer positions. ``FakeExecution`` keeps such
values real where they are small:

- small integer and bool tensors (token ids, labels, masks, grids, index tensors up to
  ``CONSTANT_LIMIT`` elements) are fake tensors that carry their real value (torch's
  "constants"), so index arithmetic is computed for real and its shapes are exact; every
  large tensor (weights, activations, gradients, optimizer states, pixels) is fake;
- a value read back from a large fake tensor (a loss printed to a log, ``isfinite`` before the
  backward pass) has no data: it reads as ``0.0``, ``True`` or ``1``. Such reads feed logs and
  checks only, never a shape: a read that decided one would make shapes differ from a real run,
  which the agreement tests on the tiny models (tests/bench/test_memory.py) would catch. The
  exceptions decide shapes, and are true of the bench's inputs: a large fake float equals no number
  (SmolVLM finds all-zero padding sub-images by ``pixel_values == 0``, and the bench's random
  images have none), and selecting by a mask is computed for real (a mask of unknown values
  selects everything).

Lightning moves and casts the module (``module.to``), which torch cannot do with fake
parameters; the model is built on the measured device in its training dtype instead, so those
calls have nothing to do and are skipped. transformers treats a fake tensor as a traced graph
and then keeps an explicit attention mask that a real run drops (``is_causal`` instead); its
check is patched to see a fake tensor as what it stands for. Private torch details this relies
on: ``fake_tensor.CONSTANT_NUMEL_LIMIT`` and a fake tensor's ``constant``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any
from unittest import mock

import torch
from torch import Tensor, nn
from torch._subclasses import fake_tensor
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.overrides import TorchFunctionMode
from torch.utils._mode_utils import no_dispatch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves, tree_map_only
from transformers import initialization, masking_utils
from transformers.utils import import_utils
from transformers.utils.import_utils import is_torch_fx_proxy

CONSTANT_LIMIT = 1 << 16  # elements: DPO's 2B × T token ids are ~5,000 at the bench shapes
NUMBER_TESTS = (torch.ops.aten.eq.Scalar, torch.ops.aten.ne.Scalar)


class _SmallValuesReal(TorchDispatchMode):
    """Small integer results of tensor factories become constants; reads of large fakes give placeholders."""

    def __init__(self, fake: FakeTensorMode) -> None:
        super().__init__()
        self.fake = fake

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten._local_scalar_dense.default and isinstance(args[0], FakeTensor) and args[0].constant is None:
            return _placeholder(args[0])
        if func is torch.ops.aten.nonzero.default and _is_mask(args[0]):
            return self._selected(args[0])
        if func is torch.ops.aten.index.Tensor and any(_is_mask(i) for i in args[1]):
            indices = [j for i in args[1] for j in (self._selected(i).unbind(1) if _is_mask(i) else [i])]
            return func(args[0], indices)
        if func in NUMBER_TESTS and isinstance(args[0], FakeTensor) and args[0].constant is None \
                and args[0].is_floating_point():
            return self._filled(args[0], func is torch.ops.aten.ne.Scalar)  # a float without value equals no number
        out = func(*args, **kwargs)
        if _is_small_index(out) and not any(isinstance(a, Tensor) for a in tree_leaves((args, kwargs))):
            with no_dispatch():  # a factory (arange, zeros, full) of a few index values: compute it for real
                value = func(*args, **kwargs)
            return _constant(self.fake, value)
        return out


    def _filled(self, like: Tensor, value: bool) -> FakeTensor:
        with no_dispatch():
            mask = torch.full(like.shape, value, dtype=torch.bool)
        return _constant(self.fake, mask)

    def _selected(self, mask: FakeTensor) -> FakeTensor:
        """``mask.nonzero()``, computed for real: from the mask's value, or from an all-true placeholder."""
        with no_dispatch():
            value = (mask.constant if mask.constant is not None else torch.ones(mask.shape, dtype=torch.bool)).nonzero()
        return _constant(self.fake, value)


def _is_mask(t: Any) -> bool:
    return isinstance(t, FakeTensor) and t.dtype == torch.bool


class _ConstantsAsValues(TorchFunctionMode):
    """``torch.tensor`` of constants (it reads a fake tensor's data directly) and ``deepcopy`` of fakes, in this mode."""

    def __init__(self, fake: FakeTensorMode) -> None:
        super().__init__()
        self.fake = fake

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.tensor:
            args = tree_map_only(FakeTensor, lambda t: t if t.constant is None else t.constant, args)
        elif func is Tensor.__deepcopy__ and isinstance(args[0], FakeTensor):  # torch's would copy into another fake mode
            if args[0].constant is None:
                return torch.empty_like(args[0])
            with no_dispatch():
                value = copy.deepcopy(args[0].constant)
            return _constant(self.fake, value)
        return func(*args, **kwargs)


def _constant(fake: FakeTensorMode, value: Tensor) -> FakeTensor:
    """A fake tensor of ``fake`` that carries ``value``."""
    return fake.fake_tensor_converter.from_real_tensor(fake, value, make_constant=True)


def _is_small_index(t: Any) -> bool:
    return (isinstance(t, Tensor) and not t.is_floating_point() and not t.is_complex()
            and t.numel() <= CONSTANT_LIMIT and t.device.type == "cpu")


def _placeholder(t: Tensor) -> float | bool | int:
    if t.dtype == torch.bool:
        return True
    return 0.0 if t.is_floating_point() else 1


class FakeExecution:
    """``build()`` for the model, ``fake(batch)`` for real inputs, ``run()`` around the step."""

    def __init__(self) -> None:
        self.mode = FakeTensorMode()

    @contextmanager
    def build(self, dtype: torch.dtype) -> Iterator[None]:
        """Tensors created inside are fake, floating ones of ``dtype``.

        transformers' weight initialisers write nothing: a fake weight holds no values, and some read them
        (SigLIP's truncated normal), which is slow on fake tensors. Tying and every shape stay as built; any
        other read of a weight gives the placeholder, as in ``run``.
        """
        default = torch.get_default_dtype()
        skip = dict.fromkeys(initialization.TORCH_INIT_FUNCTIONS, _no_values)
        with self._patched(), mock.patch.dict(initialization.TORCH_INIT_FUNCTIONS, skip), self.mode, \
                _SmallValuesReal(self.mode):
            torch.set_default_dtype(dtype)
            try:
                yield
            finally:
                torch.set_default_dtype(default)

    def fake(self, batch: dict[str, Any]) -> dict[str, Any]:
        """The batch's tensors as fakes; small integer ones keep their values."""
        convert = self.mode.fake_tensor_converter.from_real_tensor
        return {k: convert(self.mode, v, make_constant=_is_small_index(v)) if isinstance(v, Tensor) else v
                for k, v in batch.items()}

    @contextmanager
    def run(self) -> Iterator[None]:
        with self._patched(), self.mode, _SmallValuesReal(self.mode), _ConstantsAsValues(self.mode):
            yield

    @contextmanager
    def _patched(self) -> Iterator[None]:
        with ExitStack() as stack:
            stack.enter_context(mock.patch.object(fake_tensor, "CONSTANT_NUMEL_LIMIT", CONSTANT_LIMIT))
            stack.enter_context(mock.patch.object(nn.Module, "_apply", _no_move))
            stack.enter_context(mock.patch.object(masking_utils, "is_tracing", _tracing_not_faking))
            yield


def _no_values(tensor: Tensor, *args: Any, **kwargs: Any) -> Tensor:
    return tensor


def _no_move(module: nn.Module, fn: Any, recurse: bool = True) -> nn.Module:
    return module


def _tracing_not_faking(tensor: Tensor | None = None) -> bool:
    """transformers' ``is_tracing`` without its fake-tensor clause, so the attention mask is built as in a real run."""
    return import_utils.is_tracing() or (tensor is not None and is_torch_fx_proxy(tensor))
