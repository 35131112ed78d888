"""One benchmark row each: the project's SFT step and its DPO step.

Training rows run the real ``SFTModule`` / ``DPOModule`` under a lean Lightning trainer (the
stage's precision and optimizer, no checkpoints, logger or progress bar) on the same synthetic
batch every step, with ``grad_accum=1`` so every step is forward, backward and optimizer step.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from cme_vlm.bench.flops import part_parameters, part_positions, training_flops
from cme_vlm.bench.inputs import pair_batch, sft_batch
from cme_vlm.bench.timing import StepTimer, median, peak_memory_gib, reset_peak_memory
from cme_vlm.config import to_dict
from cme_vlm.models.freezing import apply_freezing
from cme_vlm.models.loading import LoadedModel
from cme_vlm.schema import ExperimentConfig, TrainConfig
from cme_vlm.training.dpo_module import DPOModule
from cme_vlm.training.reference import PrecomputedReference
from cme_vlm.training.sft_module import SFTModule
from cme_vlm.training.precision import precision_plugin, resolve_precision


class RepeatedBatch(Dataset):
    """The same collated batch ``length`` times (a DataLoader with ``batch_size=None`` passes it whole)."""

    def __init__(self, batch: dict[str, Any], length: int) -> None:
        self.batch, self.length = batch, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.batch


def _bench_train(train: TrainConfig, cfg: ExperimentConfig, steps: int) -> TrainConfig:
    return replace(train, grad_accum=1, batch_size=cfg.bench.batch_size, epochs=1,
                   max_steps=cfg.bench.warmup_steps + steps, warmup_ratio=0.0)


def _fit(module: L.LightningModule, train: TrainConfig, batch: dict[str, Any], device: torch.device) -> list[float]:
    """Fit ``module`` on ``train.max_steps`` copies of ``batch``; the seconds of every step."""
    timer = StepTimer()
    trainer = L.Trainer(
        accelerator=device.type, devices=1, plugins=[precision_plugin(train, module.stage)],
        max_steps=train.max_steps, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=0, callbacks=[timer],
    )
    trainer.fit(module, train_dataloaders=DataLoader(RepeatedBatch(batch, train.max_steps), batch_size=None))
    return timer.times


def training_row(stage: str, cfg: ExperimentConfig, loaded: LoadedModel, steps: int, device: torch.device) -> dict[str, Any]:
    """Time ``steps`` SFT or DPO steps after ``bench.warmup_steps``; tokens, FLOPs, MFU, peak memory."""
    train = _bench_train(cfg.sft if stage == "sft" else cfg.dpo, cfg, steps)
    model = apply_freezing(loaded.model, loaded.adapter, train.freezing).train()
    batch, shape = (sft_batch if stage == "sft" else pair_batch)(cfg, loaded)
    if stage == "sft":
        module: L.LightningModule = SFTModule(model, loaded.adapter, train, train.max_steps)
    else:
        module = DPOModule(model, train, PrecomputedReference(), train.max_steps)
    params = part_parameters(model, loaded.adapter)
    positions = part_positions(shape)
    flops = training_flops(params, positions)
    row: dict[str, Any] = {
        "row": stage, "shape": shape.as_dict(), "flops_per_step": flops, "positions": positions,
        "params": {p: {"trainable": c.trainable, "frozen": c.frozen} for p, c in params.items()},
        "optimizer": str(to_dict(train.optimizer)), "precision": resolve_precision(train, stage),
        "gradient_checkpointing": train.gradient_checkpointing, "freezing": to_dict(train.freezing),
    }
    reset_peak_memory(device)
    try:
        times = _fit(module, train, batch, device)[cfg.bench.warmup_steps:]
    except torch.OutOfMemoryError:
        return {**row, "status": "out of memory", "peak_memory_gib": peak_memory_gib(device)}
    finally:
        for p in model.parameters():
            p.grad = None
    step = median(times)
    return {**row, "status": "ok", "steps": len(times), "step_times_s": times, "step_time_s": step,
            "tokens_per_step": shape.tokens, "tokens_per_s": shape.tokens / step, "flops_per_s": flops / step,
            "mfu": flops / step / (cfg.bench.peak_tflops * 1e12), "peak_memory_gib": peak_memory_gib(device)}
