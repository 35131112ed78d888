"""Before a run: the disk each training stage's checkpoints and export take, the host memory it needs, and whether
the output folder and the machine have them.

A checkpoint holds every weight (the DPO reference too, when it is held in memory) and, for every
trained parameter, its optimizer state: AdamW's two moments, plus Kahan AdamW's compensation
buffer for half-precision weights. A stage keeps ``keep_checkpoints + 1`` of them
(``cme_vlm.training.checkpoints``) and writes one more beside them while it saves. Sizes are read
from the stage's ``last.ckpt`` where a run left one, else counted from the architecture on the
``meta`` device with the stage's freezing (LoRA included) and precision.

Host memory: the weights as the stage loads them, converted to the training precision on the
CPU before they move to the accelerator, and moved back to the CPU when training ends (for the
export); the in-memory DPO reference as much again; under FSDP the gathered export on rank 0 as
much again. Checkpoints are written tensor by tensor and read memory-mapped, so they add no copy.
"""

from __future__ import annotations

import copy
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import RenderableType
from rich.text import Text

from cme_vlm.console import folding_table
from cme_vlm.models.adapters import adapter_for
from cme_vlm.models.freezing import apply_freezing
from cme_vlm.models.loading import resolve_dtype
from cme_vlm.schema import ExperimentConfig, Optimizer, ReferenceMode, TrainConfig
from cme_vlm.training.checkpoints import LAST
from cme_vlm.training.precision import HALF_WEIGHTS, resolve_precision
from cme_vlm.training.sharding import STRATEGY as FSDP

GB = 1e9


@dataclass(frozen=True)
class Footprint:
    """One training stage's disk and host memory, in bytes."""

    stage: str
    checkpoint: int  # one checkpoint
    kept: int  # checkpoints on disk once the stage is done
    export: int  # the exported model folder
    host: int  # host memory of one training process at the stage's peak (weights only)
    measured: bool  # the checkpoint's size read from this run's last.ckpt

    @property
    def settled(self) -> int:
        """What the stage leaves on disk: its kept checkpoints and its export."""
        return self.kept * self.checkpoint + self.export

    @property
    def disk(self) -> int:
        """The stage's peak on disk: what it leaves, and one more checkpoint while a save is written."""
        return self.settled + self.checkpoint


def footprint(cfg: ExperimentConfig, stage: str, folder: Path) -> Footprint:
    """The footprint of training stage ``stage`` (sft, dpo, dpo-r2, ...) whose folder is ``folder``."""
    train: TrainConfig = getattr(cfg, stage.split("-")[0])
    weights_dtype = HALF_WEIGHTS.get(resolve_precision(train, stage, gpu=True), torch.float32)
    weights, trained = _parameters(cfg, train)
    size = torch.finfo(weights_dtype).bits // 8
    kahan = Optimizer(train.optimizer) is Optimizer.kahan_adamw and size < 4
    in_memory = stage.startswith("dpo") and ReferenceMode(cfg.dpo.reference) is ReferenceMode.in_memory
    counted = weights * size * (2 if in_memory else 1) + trained * size * (3 if kahan else 2)
    saved = _size(folder / "checkpoints" / LAST)
    as_loaded = torch.bfloat16 if cfg.model.dtype == "auto" else resolve_dtype(cfg.model.dtype)  # auto on a GPU
    loaded = weights * max(size, torch.finfo(as_loaded).bits // 8)
    copies = 1 + in_memory + (train.strategy == FSDP)
    return Footprint(stage, saved or counted, train.keep_checkpoints + 1, weights * size, loaded * copies, bool(saved))


def _parameters(cfg: ExperimentConfig, train: TrainConfig) -> tuple[int, int]:
    """All and trained parameters of ``cfg.model.architecture`` under ``train.freezing``, counted on ``meta``."""
    adapter = adapter_for(cfg.model.family)
    config = adapter.config_class(**copy.deepcopy(cfg.model.architecture))  # transformers edits nested dicts
    with torch.device("meta"):
        model = apply_freezing(adapter.model_class(config), adapter, train.freezing)
    params = list(model.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def _size(path: Path) -> int:
    """Bytes of a checkpoint file, or of a sharded checkpoint folder; 0 when there is none."""
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else 0


def _free_disk(folder: Path) -> int:
    """Free bytes on the file system that holds ``folder`` (or its nearest existing parent)."""
    folder = folder.resolve()
    while not folder.exists():
        folder = folder.parent
    return shutil.disk_usage(folder).free


def _host_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def preflight(cfg: ExperimentConfig, run_dir: Path, stages: Iterable[tuple[str, str]]) -> list[RenderableType]:
    """The disk and host-memory table of the training stages among ``stages`` (name, folder), and any warnings."""
    rows = [footprint(cfg, name, run_dir / folder) for name, folder in stages if name.split("-")[0] in ("sft", "dpo")]
    table = folding_table(f"disk and host memory of the training stages in GB ({cfg.model.name})", "stage",
                          "checkpoint", "kept", "export", "disk at peak", "host memory",
                          right=("checkpoint", "kept", "export", "disk at peak", "host memory"))
    for r in rows:
        table.add_row(r.stage, f"{r.checkpoint / GB:.1f}" + (" (measured)" if r.measured else ""), str(r.kept),
                      f"{r.export / GB:.1f}", f"{r.disk / GB:.1f}", f"{r.host / GB:.1f}")
    table.caption = ("a checkpoint: weights and optimizer state; kept: last.ckpt and keep_checkpoints others, and one "
                     "more while a save is written; host memory: the weights on the CPU of each training process "
                     "(DDP and FSDP start one per device), beyond what Python and CUDA take")
    out: list[RenderableType] = [table]
    needed = sum(r.settled for r in rows) + max((r.checkpoint for r in rows), default=0)  # one stage saves at a time
    free = _free_disk(run_dir)
    if needed > free:
        out.append(Text(f"warning: the training stages need {needed / GB:.0f} GB of disk, but {run_dir} has "
                        f"{free / GB:.0f} GB free. Point output_dir or --run-dir at a larger disk, or lower "
                        f"sft.keep_checkpoints / dpo.keep_checkpoints (now {cfg.sft.keep_checkpoints} / "
                        f"{cfg.dpo.keep_checkpoints}).", style="yellow"))
    host, memory = max((r.host for r in rows), default=0), _host_memory()
    if host > memory:
        out.append(Text(f"warning: a training stage needs {host / GB:.0f} GB of host memory, but this machine has "
                        f"{memory / GB:.0f} GB.", style="yellow"))
    return out
