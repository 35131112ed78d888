"""``PerStructureMetricsCallback``: the validation subset's judge score, identification and BLEU-4 per structure."""

from __future__ import annotations

from collections import defaultdict
from statistics import fmean

from lightning import LightningModule, Trainer

from callbacks.sampler import Sample, SampledValidationCallback


class PerStructureMetricsCallback(SampledValidationCallback):
    """Logs ``val_structure/<structure>/{judge,identification,bleu4}`` every N validation epochs."""

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.due(trainer):
            return
        groups: dict[str, list[Sample]] = defaultdict(list)
        for s in self.sampler.samples(pl_module.model, trainer.global_step):
            groups[s.structure].append(s)
        metrics = {}
        for structure, samples in groups.items():
            prefix = f"val_structure/{structure}"
            metrics[f"{prefix}/judge"] = fmean(s.judge.composite for s in samples)
            metrics[f"{prefix}/identification"] = fmean(float(s.identified) for s in samples)
            metrics[f"{prefix}/bleu4"] = fmean(s.bleu4 for s in samples)
        pl_module.log_dict(metrics, on_epoch=True, rank_zero_only=True)
