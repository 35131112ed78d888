"""``PreferenceDataModule``: the preference dataset's train and val splits (by procedure) as pair batches."""

from __future__ import annotations

from datasets import Dataset
from torch.utils.data import DataLoader

from cme_vlm.data.collate import ChatEncoder
from cme_vlm.data.sampling import EpochSampler, ResumableDataModule
from cme_vlm.errors import DataError
from cme_vlm.preference.pairs import PairCollator
from cme_vlm.preference.records import TRAINABLE_PAIR_PROVENANCES
from cme_vlm.schema import DPOConfig


class PreferenceDataModule(ResumableDataModule):
    """Pairs whose ``split`` column is train (shuffled) or val, those an expert rejected left out."""

    def __init__(self, pairs: Dataset, encoder: ChatEncoder, cfg: DPOConfig) -> None:
        super().__init__()
        usable = [i for i, p in enumerate(pairs["provenance"]) if p in TRAINABLE_PAIR_PROVENANCES]
        self.pairs = pairs.select(usable)
        self.collate = PairCollator(encoder)
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
            num_workers=self.cfg.num_workers, pin_memory=self.cfg.pin_memory,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, self.train_sampler(self.train_set, self.cfg.seed, self.cfg.batch_size))

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set)

    def train_eval_dataloader(self) -> DataLoader:
        """The training pairs in a fixed order, for reward accuracy on what was trained on."""
        return self._loader(self.train_set)
