"""``SFTDataModule``: the answered records of each split, augmented, batched by the collator."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from lightning import LightningDataModule
from PIL import Image
from torch.utils.data import DataLoader

from cme_vlm.data.collate import ChatEncoder, SFTCollator
from cme_vlm.data.records import TRAINABLE_PROVENANCES
from cme_vlm.errors import DataError
from cme_vlm.schema import AugmentConfig, TrainConfig

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no version check over the network
import albumentations as A  # noqa: E402

COLUMNS = ["id", "overlay", "mask", "prompt", "answer"]


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
    """Records as dicts with a PIL overlay, optionally augmented together with their mask."""

    def __init__(self, ds: Dataset, augment: A.Compose | None = None):
        self.ds = ds.select_columns(COLUMNS)
        self.augment = augment

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> dict[str, Any]:
        row = self.ds[i]
        overlay = row["overlay"].convert("RGB")
        if self.augment is not None:
            out = self.augment(image=np.asarray(overlay), mask=np.asarray(row["mask"].convert("L")))
            overlay = Image.fromarray(out["image"])
            row["mask"] = Image.fromarray(out["mask"])
        return {**row, "overlay": overlay}


class SFTDataModule(LightningDataModule):
    """Train/val/test splits of the answered dataset (from its ``split`` column, by procedure)."""

    def __init__(self, ds: Dataset, encoder: ChatEncoder, train: TrainConfig):
        super().__init__()
        self.ds, self.train_cfg = answered(ds), train
        self.collate = SFTCollator(encoder)
        self.splits: dict[str, RecordDataset] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        for split in ("train", "val", "test"):
            part = self.ds.filter(lambda s: s == split, input_columns=["split"])
            augment = augmentation(self.train_cfg.augment, self.train_cfg.seed) if split == "train" and self.train_cfg.augment.enabled else None
            self.splits[split] = RecordDataset(part, augment)
        if not len(self.splits["train"]):
            raise DataError(
                "the dataset has no answered training records (provenance teacher/expert_approved/expert_edited "
                "with a non-empty answer, split=train). Run the teacher stage first."
            )

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        return DataLoader(
            self.splits[split], batch_size=self.train_cfg.batch_size, shuffle=shuffle, collate_fn=self.collate,
            num_workers=self.train_cfg.num_workers, pin_memory=self.train_cfg.pin_memory,
            generator=torch.Generator().manual_seed(self.train_cfg.seed) if shuffle else None,
            persistent_workers=self.train_cfg.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
