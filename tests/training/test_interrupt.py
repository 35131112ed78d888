"""Ctrl-C during training stops it even when the signal lands inside a finaliser, where Python drops the
``KeyboardInterrupt`` ("Exception ignored") and training would go on."""

from __future__ import annotations

import gc
import signal

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from cme_vlm.training.interrupt import InterruptAtBatchEnd

STEPS = 6


class _SignalsWhenCollected:
    def __del__(self) -> None:
        signal.raise_signal(signal.SIGINT)  # Ctrl-C arriving while the collector runs a finaliser


class _Model(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.steps = 0

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        self.steps += 1
        if self.steps == 2:
            _SignalsWhenCollected()  # dropped at once: its __del__ runs here, inside the step
            gc.collect()
        return self.layer(batch).sum()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(callbacks: list[L.Callback]) -> tuple[L.Trainer, _Model]:
    model = _Model()
    trainer = L.Trainer(accelerator="cpu", max_steps=STEPS, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks)
    try:
        trainer.fit(model, DataLoader(torch.ones(STEPS, 2), batch_size=1))
    except SystemExit:  # Lightning ends an interrupted fit with sys.exit(1)
        pass
    return trainer, model


def test_without_it_the_ctrl_c_is_lost_in_the_finaliser():
    trainer, model = _fit([])
    assert model.steps == STEPS and not trainer.interrupted  # what the pipeline saw: SFT went on to the end


def test_ctrl_c_inside_a_finaliser_stops_training_at_that_step():
    trainer, model = _fit([InterruptAtBatchEnd()])
    assert trainer.interrupted and model.steps == 2
    with pytest.raises(KeyboardInterrupt):  # after the fit a Ctrl-C stops at once, as Python's own handler does
        signal.raise_signal(signal.SIGINT)


def test_a_second_ctrl_c_raises_at_once():
    callback = InterruptAtBatchEnd()
    callback.setup(None, None, "fit")
    try:
        signal.raise_signal(signal.SIGINT)
        assert callback.asked
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    finally:
        callback.teardown(None, None, "fit")
    with pytest.raises(KeyboardInterrupt):
        signal.raise_signal(signal.SIGINT)
