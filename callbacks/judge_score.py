"""``JudgeScoreCallback``: every N validation epochs, log the judge's scores on a fixed validation subset."""

from __future__ import annotations

from lightning import LightningModule, Trainer

from cme_vlm.callbacks.sampler import SampledValidationCallback


class JudgeScoreCallback(SampledValidationCallback):
    """Logs ``val/judge`` (composite), its clinical and conciseness parts, identification and laterality errors.

    Means over the whole subset (and the laterality error count), synced across processes.
    """

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.due(trainer):
            return
        samples = self.sampler.samples(pl_module.model, trainer.global_step)
        self.log_synced(pl_module, {
            "val/judge": [s.judge.composite for s in samples],
            "val/judge_clinical": [s.judge.clinical for s in samples],
            "val/judge_conciseness": [s.judge.conciseness for s in samples],
            "val/identification": [float(s.identified) for s in samples],
        }, sums={"val/laterality_errors": [float(s.laterality_error) for s in samples]})
