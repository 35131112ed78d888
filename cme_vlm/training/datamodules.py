"""Lightning data modules of the two training stages: ``SFTDataModule`` (answered records, augmented)
and ``PreferenceDataModule`` (preference pairs), both split by procedure and resumable mid-epoch."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from PIL import Image
from torch.utils.data import DataLoader

from cme_vlm.data.preference_records import TRAINABLE_PAIR_PROVENANCES
from cme_vlm.data.records import TRAINABLE_PROVENANCES
from cme_vlm.data.sampling import EpochSampler, ResumableDataModule
from cme_vlm.errors import DataError
from cme_vlm.models.encoding import ChatEncoder, PairCollator, SFTCollator
from cme_vlm.schema import AugmentConfig, DPOConfig, SFTConfig, Switch, TrainConfig

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no version check over the network
import albumentations as A  # noqa: E402

COLUMNS = ["id", "overlay", "mask", "prompt", "answer"]
AUTO_WORKERS = 4  # collating a batch (image processor, tokenizer) takes tens of ms; a GPU step takes hundreds


def loader_options(train: TrainConfig, device: torch.device) -> dict[str, Any]:
    """``DataLoader`` workers and pinning for training on ``device`` (``auto``: workers and pinned batches on CUDA only).

    Workers fetch and collate the batches the epoch sampler names, in its order, so the order and
    a resumed epoch are the same with or without them; on the CPU the main process collates.
    """
    cuda = device.type == "cuda"
    workers = train.num_workers if train.num_workers >= 0 else (min(AUTO_WORKERS, os.cpu_count() or 1) if cuda else 0)
    pin = train.pin_memory is Switch.always or (train.pin_memory is Switch.auto and cuda)
    return {"num_workers": workers, "pin_memory": pin, "persistent_workers": workers > 0}


def augmentation(cfg: AugmentConfig, seed: int) -> A.Compose:
    """Colour jitter (overlay only) and a small affine applied identically to overlay and mask."""
    j = cfg.colour_jitter
    return A.Compose(
        [
            A.ColorJitter(brightness=j, contrast=j, saturation=j, hue=j / 4, p=1.0),
            A.Affine(
                translate_percent=(-cfg.max_shift, cfg.max_shift), rotate=(-cfg.max_rotate_deg, cfg.max_rotate_deg),
                scale=(1 - cfg.max_scale, 1 + cfg.max_scale), p=1.0,
            ),
        ],
        seed=seed,
    )


def answered(ds: Dataset) -> Dataset:
    """Records a model may learn from: a trainable provenance and a non-empty answer."""
    return ds.filter(lambda p, a: p in TRAINABLE_PROVENANCES and bool(a.strip()), input_columns=["provenance", "answer"])


class RecordDataset(torch.utils.data.Dataset):
    """Records as dicts with a PIL overlay, optionally augmented together with their mask.

    Keyed by ``(epoch, index)`` (``EpochSampler(with_epoch=True)``), an item's augmentation is
    drawn from ``(seed, epoch, index)``: the same in a resumed run, in any worker, in any order.
    """

    def __init__(self, ds: Dataset, augment: A.Compose | None = None, seed: int = 0):
        self.ds = ds.select_columns(COLUMNS)
        self.augment, self.seed = augment, seed

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        epoch, i = key if isinstance(key, tuple) else (0, key)
        row = self.ds[i]
        overlay = row["overlay"].convert("RGB")
        if self.augment is not None:
            self.augment.set_random_seed(int(np.random.SeedSequence([self.seed, epoch, i]).generate_state(1)[0]))
            out = self.augment(image=np.asarray(overlay), mask=np.asarray(row["mask"].convert("L")))
            overlay = Image.fromarray(out["image"])
            row["mask"] = Image.fromarray(out["mask"])
        return {**row, "overlay": overlay}


class _TrainingLoaders(ResumableDataModule):
    """The DataLoader options of the device the attached trainer trains on (the CPU before one is attached)."""

    def loader_options(self, train: TrainConfig) -> dict[str, Any]:
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        return loader_options(train, device)


class SFTDataModule(_TrainingLoaders):
    """Train/val/test splits of the answered dataset (from its ``split`` column, by procedure)."""

    def __init__(self, ds: Dataset, encoder: ChatEncoder, train: SFTConfig):
        super().__init__()
        self.ds, self.train_cfg = answered(ds), train
        self.collate = SFTCollator(encoder, train.padding_free)
        self.splits: dict[str, RecordDataset] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        for split in ("train", "val", "test"):
            part = self.ds.filter(lambda s: s == split, input_columns=["split"])
            augment = augmentation(self.train_cfg.augment, self.train_cfg.seed) if split == "train" and self.train_cfg.augment.enabled else None
            self.splits[split] = RecordDataset(part, augment, self.train_cfg.seed)
        if not len(self.splits["train"]):
            raise DataError(
                "the dataset has no answered training records (provenance teacher/expert_approved/expert_edited "
                "with a non-empty answer, split=train). Run the teacher stage first."
            )

    def _loader(self, split: str, sampler: EpochSampler | None = None) -> DataLoader:
        return DataLoader(
            self.splits[split], batch_size=self.train_cfg.batch_size, sampler=sampler, collate_fn=self.collate,
            **self.loader_options(self.train_cfg),
        )

    def train_dataloader(self) -> DataLoader:
        train = self.splits["train"]
        return self._loader("train", self.train_sampler(train, self.train_cfg.seed, self.train_cfg.batch_size, True))

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")


class PreferenceDataModule(_TrainingLoaders):
    """Pairs whose ``split`` column is train (shuffled) or val, those an expert rejected left out."""

    def __init__(self, pairs: Dataset, encoder: ChatEncoder, cfg: DPOConfig) -> None:
        super().__init__()
        usable = [i for i, p in enumerate(pairs["provenance"]) if p in TRAINABLE_PAIR_PROVENANCES]
        self.pairs = pairs.select(usable)
        self.collate = PairCollator(encoder, cfg.padding_free)
        self.cfg = cfg
        splits = self.pairs["split"]
        self.train_set = self.pairs.select([i for i, s in enumerate(splits) if s == "train"])
        self.val_set = self.pairs.select([i for i, s in enumerate(splits) if s == "val"])
        if len(self.train_set) == 0:
            raise DataError(
                "the preference dataset has no usable pairs in the train split. "
                "Build more pairs (`cme-vlm preference build`) or check the expert review verdicts."
            )

    def _loader(self, ds: Dataset, sampler: EpochSampler | None = None) -> DataLoader:
        return DataLoader(
            ds, batch_size=self.cfg.batch_size, sampler=sampler, collate_fn=self.collate,
            **self.loader_options(self.cfg),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, self.train_sampler(self.train_set, self.cfg.seed, self.cfg.batch_size))

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set)

    def report_dataloader(self, split: str, limit: int) -> DataLoader:
        """The first ``limit`` pairs of ``split`` (train or val) in a fixed order, for the stage's reward report."""
        pairs = self.train_set if split == "train" else self.val_set
        return self._loader(pairs.select(range(min(limit, len(pairs)))))
