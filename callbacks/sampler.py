"""A fixed validation subset, answered greedily by the model in training and judged; shared by the callbacks.

Under data parallelism each process answers its share of the subset, and the callbacks' means are
torchmetrics aggregates synced over the processes, so they equal those of a single process.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from lightning import Callback, LightningModule, Trainer
from PIL import Image
from torchmetrics.aggregation import MeanMetric, SumMetric

from cme_vlm.anatomy import Anatomy
from cme_vlm.models.generation import generate
from cme_vlm.models.loading import LoadedModel
from cme_vlm.schema import ExperimentConfig
from cme_vlm.scoring.clinical import identification_hits, laterality_errors
from cme_vlm.scoring.judge import JudgeCase, JudgeScore
from cme_vlm.scoring.metrics import sentence_bleu


@dataclass(frozen=True)
class Sample:
    """One validation case with the model's answer and its scores."""

    row: dict[str, Any]
    answer: str
    judge: JudgeScore
    bleu4: float
    identified: bool
    laterality_error: bool

    @property
    def structure(self) -> str:
        return self.row["structure"]

    @property
    def overlay(self) -> Image.Image:
        return self.row["overlay"]


class ValidationSampler:
    """Generates and judges ``rows`` at most once per training step, however many callbacks ask."""

    def __init__(self, cfg: ExperimentConfig, loaded: LoadedModel, rows: list[dict[str, Any]], judge: Any):
        self.cfg, self.loaded, self.rows, self.judge = cfg, loaded, rows, judge
        self.subset = rows  # all processes' cases; ``rows`` is this process's share
        self.anatomy = Anatomy(cfg.anatomy)
        self._cache: tuple[int, list[Sample]] | None = None

    def shard(self, rank: int, world_size: int) -> None:
        """Answer only every ``world_size``-th case of the subset, from the ``rank``-th on."""
        self.rows = self.subset[rank::world_size]
        self._cache = None

    def samples(self, model: Any, step: int) -> list[Sample]:
        """The subset answered by ``model`` (the module's current weights) at training step ``step``."""
        if self._cache is not None and self._cache[0] == step:
            return self._cache[1]
        current = LoadedModel(model, self.loaded.processor, self.loaded.adapter)
        answers = generate(current, [r["overlay"].convert("RGB") for r in self.rows], [r["prompt"] for r in self.rows],
                           self.cfg.eval.max_new_tokens, self.cfg.eval.batch_size, self.cfg.generation)
        refs = [r["answer"] for r in self.rows]
        hits = identification_hits(self.anatomy, answers, [r["structure"] for r in self.rows])
        lateral = laterality_errors(answers, [r["side"] for r in self.rows])
        bleu = sentence_bleu(answers, refs, self.cfg.eval.bleu_smoothing)
        samples = [
            Sample(row, a, self.judge.score(JudgeCase.from_row(row, a)), b, h, e)
            for row, a, b, h, e in zip(self.rows, answers, bleu, hits, lateral, strict=True)
        ]
        self._cache = (step, samples)
        return samples


class SampledValidationCallback(Callback):
    """Base for callbacks that log the ``sampler``'s results on every N-th validation epoch (sanity checks do not count)."""

    def __init__(self, sampler: ValidationSampler | None, every_n_val: int = 1):
        self.sampler = sampler
        self.every_n_val = max(1, every_n_val)
        self._validations = 0

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.sampler is not None:
            self.sampler.shard(trainer.global_rank, trainer.world_size)

    def due(self, trainer: Trainer) -> bool:
        """Count this validation and say whether it is one to act on (the 1st, the N+1-th, ...)."""
        if trainer.sanity_checking:
            return False
        self._validations += 1
        return (self._validations - 1) % self.every_n_val == 0

    @staticmethod
    def log_synced(pl_module: LightningModule, means: dict[str, list[float]],
                   sums: dict[str, list[float]] | None = None) -> None:
        """Log the mean of each list in ``means`` and the sum of each in ``sums``, over the values of all processes.

        torchmetrics syncs the sums and counts at ``compute``: every process must call this with the same
        keys in the same order, with an empty list where it has no value for a key.
        """
        metrics = {**{k: (MeanMetric(), v) for k, v in means.items()},
                   **{k: (SumMetric(), v) for k, v in (sums or {}).items()}}
        synced = {}
        for key, (metric, values) in metrics.items():
            metric = metric.to(pl_module.device)
            metric.update(torch.tensor(values, dtype=torch.float32, device=pl_module.device))
            synced[key] = metric.compute()
        pl_module.log_dict(synced, on_epoch=True, rank_zero_only=True)
