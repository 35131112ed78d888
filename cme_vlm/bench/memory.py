"""Peak memory of one real SFT or DPO training step, measured on the CPU without allocating it.

The configured model is built on fake tensors (``cme_vlm.bench.fake_execution``), a batch of the
bench shapes (``bench.image_side``, ``bench.prompt_tokens``, ``bench.answer_tokens``; the stage's
``batch_size`` sequences or pairs) goes through the project's own collator, and the real
``SFTModule`` / ``DPOModule`` runs two optimizer steps (the first allocates the optimizer states)
under a Lightning ``Trainer`` with the stage's precision, optimizer, gradient release, gradient
checkpointing and freezing. torch's ``MemTracker`` counts every live tensor storage, rounded up
to the CUDA caching allocator's 512-byte blocks, by kind (weights, gradients, optimizer states,
activations and temporaries), and keeps the snapshot at the peak.

What it cannot see: memory no tensor owns (kernel workspaces, cuBLAS/cuDNN handles, the CUDA
context of ~0.5 GiB) and the caching allocator's fragmentation; and the step runs on CPU kernels,
whose attention saves the same outputs as the GPU's flash/efficient kernels. So it is the floor
``torch.cuda.max_memory_allocated`` reports on a GPU, not ``nvidia-smi``'s figure.

A 7B step takes about a minute on two CPU cores, too long for ``--dry-run``: measurements are
kept as ``<stage>-<key>.json``, keyed by every setting that can change the memory. The package
ships those of its own experiments (``cme_vlm/bench/measurements``); ``cme-vlm bench --memory``
records a user's own settings in ``$CME_VLM_MEASUREMENTS`` (default ``~/.cache/cme-vlm/memory``),
which the dry-run reads first.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import lightning as L
import torch
import transformers
from torch import nn
from torch.distributed._tools.mem_tracker import MemTracker, _MemRefType
from torch.utils.data import DataLoader

from cme_vlm import atomic
from cme_vlm.bench.fake_execution import FakeExecution
from cme_vlm.bench.inputs import pair_batch, sft_batch
from cme_vlm.bench.rows import RepeatedBatch
from cme_vlm.config import to_dict
from cme_vlm.models.freezing import apply_freezing
from cme_vlm.models.loading import LoadedModel, load_model
from cme_vlm.schema import ExperimentConfig, ReferenceMode, TrainConfig
from cme_vlm.training.dpo_module import DPOModule
from cme_vlm.training.precision import HALF_WEIGHTS, resolve_precision
from cme_vlm.training.reference import (
    AdapterDisabledReference,
    InMemoryReference,
    PrecomputedReference,
    Reference,
)
from cme_vlm.training.sft_module import SFTModule

SHIPPED_MEASUREMENTS = Path(__file__).resolve().parent / "measurements"
USER_MEASUREMENTS_ENV = "CME_VLM_MEASUREMENTS"
STEPS = 2
GIB_COLUMNS = ("weights", "grads", "optim.", "activ.", "peak")
# settings that cannot change a step's memory; every other key of the stage, the model and the shapes can
UNRELATED = ("epochs", "max_steps", "grad_accum", "lr", "weight_decay", "warmup_ratio", "min_lr_ratio", "grad_clip",
             "lr_scale", "augment", "num_workers", "pin_memory", "accelerator", "devices", "strategy", "num_nodes",
             "val_every_n_steps", "checkpoint_every_n_steps", "keep_checkpoints", "log_every_n_steps", "seed", "beta",
             "loss", "label_smoothing", "sft_weight")
KINDS = {"weights": (_MemRefType.PARAM, _MemRefType.BUFFER), "gradients": (_MemRefType.GRAD,),
         "optimizer": (_MemRefType.OPT,), "activations": (_MemRefType.ACT, _MemRefType.TEMP), "other": (_MemRefType.OTH,)}


@dataclass(frozen=True)
class StepMemory:
    """The peak of one stage's training step and what was alive then, in bytes."""

    stage: str
    key: str
    peak: int
    parts: dict[str, int]  # weights, gradients, optimizer, activations (incl. backward temporaries), other
    settings: dict[str, Any]  # what the key covers
    shape: dict[str, int]
    provenance: dict[str, str]  # how and where it was measured

    def as_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "key": self.key, "peak": self.peak, "parts": self.parts,
                "settings": self.settings, "shape": self.shape, "provenance": self.provenance}

    def gib(self) -> tuple[str, ...]:
        """Weights, gradients, optimizer states, activations and the peak in GiB, as the tables show them
        (columns ``GIB_COLUMNS``)."""
        parts = (self.parts[k] for k in ("weights", "gradients", "optimizer", "activations"))
        return tuple(f"{b / 2**30:.1f}" for b in (*parts, self.peak))


def stage_train(cfg: ExperimentConfig, stage: str) -> TrainConfig:
    return cfg.sft if stage == "sft" else cfg.dpo


def training_precision(train: TrainConfig) -> str:
    """The precision the stage runs at on a GPU (``cme_vlm.training.precision``)."""
    return resolve_precision(train, "train", gpu=True)


def weights_dtype(cfg: ExperimentConfig, train: TrainConfig) -> torch.dtype:
    """The trained weights' dtype: half for ``bf16-true``/``16-true``, float32 otherwise (the precision plugins')."""
    return HALF_WEIGHTS.get(training_precision(train), torch.float32)


def memory_settings(cfg: ExperimentConfig, stage: str) -> dict[str, Any]:
    """Every setting the step's memory depends on."""
    train = {k: v for k, v in to_dict(stage_train(cfg, stage)).items() if k not in UNRELATED}
    model = {k: v for k, v in to_dict(cfg.model).items() if k not in ("name", "path", "tokenizer")}
    train["precision"] = training_precision(stage_train(cfg, stage))
    model["dtype"] = str(weights_dtype(cfg, stage_train(cfg, stage))).removeprefix("torch.")
    shapes = {k: getattr(cfg.bench, k) for k in ("image_side", "prompt_tokens", "answer_tokens")}
    return {"stage": stage, "train": train, "model": model, "bench": shapes}


def memory_key(cfg: ExperimentConfig, stage: str) -> str:
    text = json.dumps(memory_settings(cfg, stage), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class PeakTracker(MemTracker):
    """``MemTracker`` keeping the whole-step peak only, with gradient hooks on trainable parameters only.

    Its per-module peaks cost a pass over every module at every operator (minutes for a 7B step),
    and it would hook frozen parameters, which torch refuses. Both overrides replace private
    methods of torch 2.14's tracker, as does the bookkeeping they touch.
    """

    def _update_peak_stats(self, peak_state: Any) -> None:
        for device, snapshot in self._curr_mem_snap.items():
            if self._peak_mem.get(device, 0) < snapshot["Total"]:
                self._peak_mem[device] = snapshot["Total"]
                self._peak_mem_snap[device] = dict(snapshot)

    def _track_module_params_and_buffers(self, module: nn.Module, install_grad_hooks: bool = True) -> tuple[int, int]:
        sizes = super()._track_module_params_and_buffers(module, install_grad_hooks=False)
        for param in module.parameters():
            if install_grad_hooks and param.requires_grad and param not in self._param_to_grad_hook_handles:
                self._param_to_grad_hook_handles[param] = (param.register_hook(self._track_grad),
                                                           param.register_post_accumulate_grad_hook(self._track_param_grad))
        return sizes

    def _track_grad(self, grad: torch.Tensor) -> None:
        self._update_and_maybe_create_winfos(grad, _MemRefType.GRAD)

    def _track_param_grad(self, param: torch.Tensor) -> None:
        self._track_grad(param.grad)

    def peak(self) -> tuple[int, dict[str, int]]:
        snapshot = next(iter(self._peak_mem_snap.values()), {})
        parts = {kind: sum(snapshot.get(r, 0) for r in refs) for kind, refs in KINDS.items()}
        return int(snapshot.get("Total", 0)), parts


class _ResetModuleStats(L.Callback):
    """``MemTracker`` refuses a module's second forward pass unless its per-module stats are cleared."""

    def __init__(self, tracker: MemTracker) -> None:
        self.tracker = tracker

    def on_train_batch_start(self, *args: Any) -> None:
        self.tracker.reset_mod_stats()


def _reference(cfg: ExperimentConfig, policy: nn.Module, copy: nn.Module | None) -> Reference:
    mode = ReferenceMode(cfg.dpo.reference)
    if mode is ReferenceMode.precomputed:
        return PrecomputedReference()
    if mode is ReferenceMode.adapter_disabled:
        return AdapterDisabledReference(policy)
    return InMemoryReference(copy.eval().requires_grad_(False))


def _models(cfg: ExperimentConfig, stage: str) -> tuple[LoadedModel, nn.Module | None]:
    """The model, and for DPO with ``dpo.reference: in_memory`` the reference's copy of it."""
    in_memory = stage == "dpo" and ReferenceMode(cfg.dpo.reference) is ReferenceMode.in_memory
    return load_model(cfg), load_model(cfg).model if in_memory else None


def _module(stage: str, cfg: ExperimentConfig, loaded: LoadedModel, reference: nn.Module | None,
            train: TrainConfig) -> L.LightningModule:
    model = apply_freezing(loaded.model, loaded.adapter, train.freezing).train()
    if stage == "sft":
        return SFTModule(model, loaded.adapter, train, STEPS)
    return DPOModule(model, train, _reference(cfg, model, reference), STEPS)


def _step_peak(module: L.LightningModule, train: TrainConfig, batch: dict[str, Any]) -> tuple[int, dict[str, int]]:
    tracker = PeakTracker()
    tracker.track_external(module)
    trainer = L.Trainer(
        accelerator="cpu", devices=1, precision=training_precision(train), max_steps=STEPS, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        limit_val_batches=0, callbacks=[_ResetModuleStats(tracker)],
    )
    with tracker:
        trainer.fit(module, train_dataloaders=DataLoader(RepeatedBatch(batch, STEPS), batch_size=None))
    return tracker.peak()


def measure_step_memory(cfg: ExperimentConfig, stage: str, fake: bool = True) -> StepMemory:
    """Run ``STEPS`` steps of ``stage`` at the bench shapes and return their peak (``fake=False``: real tensors)."""
    started = time.perf_counter()
    train = replace(stage_train(cfg, stage), grad_accum=1, epochs=1, max_steps=STEPS, warmup_ratio=0.0)
    shaped = replace(cfg, bench=replace(cfg.bench, batch_size=train.batch_size))
    execution = FakeExecution() if fake else None
    if execution:
        with execution.build(weights_dtype(cfg, train)):
            loaded, reference = _models(cfg, stage)
    else:
        loaded, reference = _models(cfg, stage)
    batch, shape = (sft_batch if stage == "sft" else pair_batch)(shaped, loaded)
    if execution:
        with execution.run():
            peak, parts = _step_peak(_module(stage, cfg, loaded, reference, train), train, execution.fake(batch))
    else:
        peak, parts = _step_peak(_module(stage, cfg, loaded, reference, train), train, batch)
    provenance = {"method": "fake tensors, torch MemTracker" if fake else "real tensors on CPU, torch MemTracker",
                  "steps": str(STEPS), "torch": torch.__version__, "transformers": transformers.__version__,
                  "machine": platform.machine(), "seconds": f"{time.perf_counter() - started:.0f}",
                  "date": time.strftime("%Y-%m-%d")}
    return StepMemory(stage, memory_key(cfg, stage), peak, parts, memory_settings(cfg, stage), shape.as_dict(), provenance)


def user_measurements() -> Path:
    """Where ``cme-vlm bench --memory`` keeps a user's measurements."""
    return Path(os.environ.get(USER_MEASUREMENTS_ENV, "~/.cache/cme-vlm/memory")).expanduser()


def record_step_memory(cfg: ExperimentConfig, stages: tuple[str, ...] = ("sft", "dpo"),
                       folder: Path | None = None) -> list[StepMemory]:
    """Measure each stage and keep the result where ``cached_step_memory`` finds it (the dry-run's table)."""
    folder = folder or user_measurements()
    results = []
    for stage in stages:
        result = measure_step_memory(cfg, stage)
        atomic.write_json(folder / f"{stage}-{result.key}.json", result.as_dict())
        results.append(result)
    return results


def cached_step_memory(cfg: ExperimentConfig, stage: str, folders: tuple[Path, ...] | None = None) -> StepMemory | None:
    """The kept measurement of exactly these settings, if one was recorded (the user's first, then the shipped)."""
    return kept_measurement(f"{stage}-{memory_key(cfg, stage)}.json", folders)


def kept_measurement(name: str, folders: tuple[Path, ...] | None = None) -> StepMemory | None:
    """The measurement file ``name`` from the user's folder, else the shipped one, if either holds it."""
    for folder in folders or (user_measurements(), SHIPPED_MEASUREMENTS):
        if (folder / name).is_file():
            return StepMemory(**json.loads((folder / name).read_text()))
    return None
