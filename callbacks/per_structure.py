"""``PerStructureMetricsCallback``: the validation subset's judge score, identification and BLEU-4 per structure."""

from __future__ import annotations

from lightning import LightningModule, Trainer

from cme_vlm.callbacks.sampler import SampledValidationCallback


class PerStructureMetricsCallback(SampledValidationCallback):
    """Logs ``val_structure/<structure>/{judge,identification,bleu4}`` every N validation epochs.

    Means over the subset's cases of each structure, synced across processes.
    """

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.due(trainer):
            return
        samples = self.sampler.samples(pl_module.model, trainer.global_step)
        means = {}
        # every structure of the whole subset, so each process syncs the same keys whatever its share holds
        for structure in dict.fromkeys(row["structure"] for row in self.sampler.subset):
            mine = [s for s in samples if s.structure == structure]
            prefix = f"val_structure/{structure}"
            means[f"{prefix}/judge"] = [s.judge.composite for s in mine]
            means[f"{prefix}/identification"] = [float(s.identified) for s in mine]
            means[f"{prefix}/bleu4"] = [s.bleu4 for s in mine]
        self.log_synced(pl_module, means)
