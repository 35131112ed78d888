"""A training stage's checkpoints: which are kept, the final one, how one is written and read, which one resumes.

Every ``checkpoint_every_n_steps`` optimizer steps the stage writes ``step=N.ckpt`` and
``last.ckpt`` (weights, optimizer state, loops: what a resume needs); of the ``step=N.ckpt`` files
only the newest ``keep_checkpoints`` stay. When training ends ``last.ckpt`` holds the final
state, wherever the periodic saves stopped. So a stage holds ``keep_checkpoints + 1`` checkpoints
on disk, one more while a save is written (a file appears under its name only when complete), and
a 7B checkpoint with its Kahan AdamW state is about 62 GB (the dry-run prints each stage's share).

After the final save the optimizer state is released: Lightning's teardown would otherwise copy
all of it to host memory (and with gradient release every parameter's state links to its whole
parameter group, which the copy would duplicate once per parameter: hundreds of GB for the 7B).
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from cme_vlm import atomic
from cme_vlm.errors import ConfigError, TrainingError
from cme_vlm.schema import TrainConfig
from cme_vlm.training.sharding import CHECKPOINT_FILES
from cme_vlm.training.sharding import STRATEGY as FSDP

LAST = "last.ckpt"


class StageCheckpoints(ModelCheckpoint):
    """Periodic checkpoints, the newest ``keep_checkpoints`` kept beside ``last.ckpt``; the final state saved last."""

    def __init__(self, folder: Path, train: TrainConfig, stage: str) -> None:
        if train.keep_checkpoints < 0:
            raise ConfigError(f"{stage}.keep_checkpoints={train.keep_checkpoints} must be 0 (last.ckpt only) or more.")
        # no version counter: a resumed run overwrites last.ckpt rather than writing last-v1.ckpt beside it
        super().__init__(
            dirpath=folder, filename="{step}", save_last=True, save_top_k=train.keep_checkpoints, monitor="step",
            mode="max", every_n_train_steps=train.checkpoint_every_n_steps or None, save_on_train_epoch_end=True,
            enable_version_counter=False,
        )
        self.saved_step: int | None = None

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        self.saved_step = trainer.global_step

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.saved_step != trainer.global_step:
            trainer.save_checkpoint(Path(self.dirpath) / LAST)
        release_optimizer_state(trainer)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        release_optimizer_state(trainer)


def release_optimizer_state(trainer: L.Trainer) -> None:
    """Drop every optimizer's state, so the strategy's teardown has none to move to the CPU."""
    for optimizer in trainer.optimizers:
        optimizer.state.clear()


class StreamingCheckpointIO(TorchCheckpointIO):
    """Writes a checkpoint tensor by tensor into a temporary file beside it, renamed into place when complete; reads
    it memory-mapped.

    Lightning's own serialises the whole checkpoint into host memory and copies that buffer once more
    before writing (``_atomic_save``): twice the checkpoint, ~124 GB for the 7B, at every save; and it
    reads a checkpoint into host memory whole.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        with atomic.atomic_file(path) as tmp:
            torch.save(checkpoint, tmp)

    def load_checkpoint(
        self, path: str | Path, map_location: Any = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        if not Path(path).is_file():
            raise FileNotFoundError(f"Checkpoint file not found: {path}")
        return torch.load(path, map_location=map_location or "cpu", weights_only=weights_only, mmap=True)


def resume_checkpoint(out: Path, train: TrainConfig, stage: str) -> Path | None:
    """``out/checkpoints/last.ckpt`` when a run left one; a damaged one is refused before training starts.

    Under ``strategy: fsdp`` the checkpoint is a folder of shards (``cme_vlm.training.sharding``).
    """
    path = out / "checkpoints" / LAST
    if path.is_dir():
        if not all((path / name).is_file() for name in CHECKPOINT_FILES):
            raise _damaged(path)
        if train.strategy != FSDP:
            raise TrainingError(f"checkpoint '{path}' is a folder of shards, written under {stage}.strategy=fsdp. "
                                f"Resume it with {stage}.strategy=fsdp, or delete '{path.parent}' to start afresh.")
        return path
    if not path.is_file():
        return None
    if not zipfile.is_zipfile(path):  # torch checkpoints are zip archives; a cut-off one lacks its directory
        raise _damaged(path)
    return path


def _damaged(path: Path) -> TrainingError:
    return TrainingError(
        f"checkpoint '{path}' is damaged (incomplete, perhaps cut off by a crash). Rename the newest "
        f"'step=*.ckpt' beside it to last.ckpt to resume from there, or delete '{path.parent}' to start afresh."
    )
