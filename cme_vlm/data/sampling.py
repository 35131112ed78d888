"""Training order that a run resumed mid-epoch shares with an uninterrupted run.

Each epoch's permutation is drawn from ``(seed, epoch)`` alone, so it does not depend on how
many times the process restarted; each rank takes its shard of that same permutation. The
data module stores how many batches of the current epoch were consumed in the checkpoint, and
after a restore the sampler skips them: Lightning 2.6 re-iterates a plain DataLoader from the
epoch's start while its loop counters (``batch_idx``, the last-batch check) go on from the
checkpoint, so the loader itself must yield only the epoch's remaining batches.
"""

from __future__ import annotations

from collections.abc import Iterator, Sized
from typing import Any

from lightning import LightningDataModule
from torch.utils.data import DistributedSampler


class EpochSampler(DistributedSampler):
    """This rank's shard of the ``(seed, epoch)`` permutation, less the batches a resumed epoch already saw.

    ``len()`` stays the full shard length: Lightning counts the epoch's batches from it and
    continues its batch index after the skipped ones. With ``with_epoch`` it yields
    ``(epoch, index)`` keys, for datasets whose per-item randomness depends on the epoch.
    """

    def __init__(self, dataset: Sized, seed: int, batch_size: int, num_replicas: int = 1, rank: int = 0,
                 with_epoch: bool = False) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.batch_size, self.with_epoch = batch_size, with_epoch
        self.resume_epoch, self.resume_batches = -1, 0

    def resume_at(self, epoch: int, batches: int) -> None:
        """Skip the first ``batches`` batches of epoch ``epoch`` (a checkpoint's position)."""
        self.resume_epoch, self.resume_batches = epoch, batches

    def __iter__(self) -> Iterator[Any]:
        indices = list(super().__iter__())
        if self.epoch == self.resume_epoch:
            indices = indices[self.resume_batches * self.batch_size:]
        return iter([(self.epoch, i) for i in indices] if self.with_epoch else indices)


class ResumableDataModule(LightningDataModule):
    """A data module whose train sampler resumes mid-epoch where the checkpoint left off.

    Lightning calls ``state_dict`` when it saves a checkpoint and ``load_state_dict`` when it
    restores one, before it asks for the train DataLoader.
    """

    def __init__(self) -> None:
        super().__init__()
        self._resume = {"epoch": -1, "batches": 0}

    def state_dict(self) -> dict[str, int]:
        if self.trainer is None:
            return {}
        # ``processed`` counts the batch whose end hook is saving, which the resumed run must not redo
        batches = self.trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return {"epoch": self.trainer.current_epoch, "batches": batches}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        if state_dict:
            self._resume = {"epoch": int(state_dict["epoch"]), "batches": int(state_dict["batches"])}

    def train_sampler(self, dataset: Sized, seed: int, batch_size: int, with_epoch: bool = False) -> EpochSampler:
        """The epoch sampler for this process's rank, positioned at a restored checkpoint's batch."""
        world, rank = (self.trainer.world_size, self.trainer.global_rank) if self.trainer is not None else (1, 0)
        sampler = EpochSampler(dataset, seed, batch_size, world, rank, with_epoch)
        sampler.resume_at(self._resume["epoch"], self._resume["batches"])
        return sampler
