"""Count what a piece of code asks of torch: named operators, and reads of tensor values by the host.

On an accelerator each host read (``.item()``, ``bool(t)``, ``.tolist()``) waits for the device to
finish everything queued before it; on the CPU the same calls cost nothing, so tests count them.
"""

from __future__ import annotations

from typing import Any
from unittest import mock

import torch
from torch.utils._python_dispatch import TorchDispatchMode


class CountingOps(TorchDispatchMode):
    """``count``: how many dispatched operators have one of ``names`` as their base name (``exponential_``)."""

    def __init__(self, *names: str) -> None:
        super().__init__()
        self.names, self.count = names, 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func.__name__.split(".")[0] in self.names:
            self.count += 1
        return func(*args, **(kwargs or {}))


class CountingHostReads(CountingOps):
    """``count``: scalar reads (``.item()``, ``bool()``, ``int()`` of a tensor) plus ``.tolist()`` calls."""

    def __init__(self) -> None:
        super().__init__("_local_scalar_dense")

        def counted_tolist(tensor: torch.Tensor) -> Any:
            self.count += 1
            return torch._C.TensorBase.tolist(tensor)

        self._tolist = mock.patch.object(torch.Tensor, "tolist", counted_tolist)

    def __enter__(self) -> CountingHostReads:
        self._tolist.start()
        return super().__enter__()

    def __exit__(self, *exc: Any) -> None:
        super().__exit__(*exc)
        self._tolist.stop()
