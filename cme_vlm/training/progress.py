"""Training progress on the console: Lightning's Rich bar in a terminal, plain lines in a log file.

A Rich bar redraws one line in place, so output redirected to a file or a job scheduler's log
shows nothing until the stage ends. There the trainer gets ``LineProgress`` instead, a Lightning
progress bar that prints one line every ``every`` optimizer steps (about 20 per stage) and at
least every ``MAX_SILENCE_S`` seconds: step, loss, rate and time left; and one line per validation.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ProgressBar, RichProgressBar
from rich.console import Console

LINES_PER_STAGE = 20
MAX_SILENCE_S = 120.0


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def _number(value: Any) -> str:
    value = float(value)
    return f"{value:.4g}"


class LineProgress(ProgressBar):
    """One plain line every ``every`` optimizer steps (or ``MAX_SILENCE_S``) and after each validation."""

    def __init__(self, job: str) -> None:
        super().__init__()
        self.job, self.enabled = job, True
        self._started = self._last_line = 0.0
        self._first_step = self._printed_step = 0

    def disable(self) -> None:
        self.enabled = False

    def enable(self) -> None:
        self.enabled = True

    def print(self, *args: Any, **kwargs: Any) -> None:
        print(*args, **kwargs, file=sys.stderr, flush=True)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._started = self._last_line = time.monotonic()
        self._first_step = self._printed_step = trainer.global_step  # a resumed run starts further on

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        step, total = trainer.global_step, trainer.max_steps
        every = max(1, math.ceil(total / LINES_PER_STAGE)) if total > 0 else 1
        due = step // every > self._printed_step // every or time.monotonic() - self._last_line > MAX_SILENCE_S
        if not self.enabled or step == self._printed_step or not (due or step == total):
            return
        self._printed_step, self._last_line = step, time.monotonic()
        rate = (step - self._first_step) / max(time.monotonic() - self._started, 1e-9)
        metrics = self.get_metrics(trainer, pl_module)
        parts = [f"{self.job} step {step}/{total}" if total > 0 else f"{self.job} step {step}"]
        if "train/loss" in metrics:
            parts.append(f"loss {_number(metrics['train/loss'])}")
        parts.append(f"{rate:.2f} steps/s")
        if total > 0 and rate > 0:
            parts.append(f"{_duration((total - step) / rate)} left")
        self.print(" · ".join(parts))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = self.get_metrics(trainer, pl_module)
        if self.enabled and not trainer.sanity_checking and "val/loss" in metrics:
            self.print(f"{self.job} validation at step {trainer.global_step} · val/loss {_number(metrics['val/loss'])}")


def progress_bar(job: str) -> ProgressBar:
    """Rich's bar where the console is a terminal, ``LineProgress`` where it is a file or a pipe."""
    return RichProgressBar() if Console().is_terminal else LineProgress(job)
