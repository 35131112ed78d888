"""Wall-clock timing with device synchronisation, and peak memory on GPU or CPU."""

from __future__ import annotations

import resource
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback


def synchronize(device: torch.device) -> None:
    """Wait for queued device work, so a host clock reads the time the work took."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: torch.device) -> float:
    """GPU: peak allocated since the last reset. CPU: the process's peak resident set so far."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**30 if sys.platform == "darwin" else 2**20)


def memory_kind(device: torch.device) -> str:
    return "torch.cuda.max_memory_allocated" if device.type == "cuda" else "peak RSS of the process (resource)"


def median(times: list[float]) -> float:
    return statistics.median(times) if times else float("nan")


def time_calls(fn: Callable[[], Any], device: torch.device, warmup: int, steps: int) -> list[float]:
    """Seconds of each of ``steps`` calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


class StepTimer(Callback):
    """Times every training batch of a Lightning fit (forward, backward, optimizer step) with syncs."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._start = 0.0

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        synchronize(pl_module.device)
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        synchronize(pl_module.device)
        self.times.append(time.perf_counter() - self._start)
