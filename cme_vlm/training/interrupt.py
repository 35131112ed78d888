"""Ctrl-C during training, taken at the next batch boundary.

Python raises ``KeyboardInterrupt`` wherever the main thread happens to be when SIGINT arrives. Raised
inside a finaliser (a ``__del__`` or weakref callback the garbage collector runs: a data-loader iterator,
a file object, a tensor's storage), it is printed as "Exception ignored" and lost, and training goes on.
``InterruptAtBatchEnd`` takes the signal itself and raises the interrupt at the next training or
validation batch end, where Lightning's graceful shutdown receives it; a second Ctrl-C raises at once.
Outside a fit the handler raises at once, as Python's own does: Lightning's signal connector may put it
back after the fit (it restores the handlers it found when the fit started, this one among them).
"""

from __future__ import annotations

import signal
import threading
from typing import Any

from lightning import Callback


class InterruptAtBatchEnd(Callback):
    def __init__(self) -> None:
        self.asked = False
        self._previous: Any = None

    def _on_sigint(self, signum: int, frame: Any) -> None:
        if self.asked or self._previous is None:  # asked twice, or no fit running: stop now, wherever it is
            raise KeyboardInterrupt
        self.asked = True

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        # only the main thread may set a handler; installed once, however often Lightning sets up
        if self._previous is None and threading.current_thread() is threading.main_thread():
            self.asked, self._previous = False, signal.signal(signal.SIGINT, self._on_sigint)

    def _restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self._restore()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self._restore()

    def _raise_if_asked(self, *args: Any) -> None:
        if self.asked:
            self.asked = False
            raise KeyboardInterrupt

    on_train_batch_end = _raise_if_asked
    on_validation_batch_end = _raise_if_asked
