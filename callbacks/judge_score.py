"""``JudgeScoreCallback``: every N validation epochs, log the judge's scores on a fixed validation subset."""

from __future__ import annotations

from statistics import fmean

from lightning import LightningModule, Trainer

from callbacks.sampler import SampledValidationCallback


class JudgeScoreCallback(SampledValidationCallback):
    """Logs ``val/judge`` (composite), its clinical and conciseness parts, identification and laterality errors."""

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.due(trainer):
            return
        samples = self.sampler.samples(pl_module.model, trainer.global_step)
        pl_module.log_dict({
            "val/judge": fmean(s.judge.composite for s in samples),
            "val/judge_clinical": fmean(s.judge.clinical for s in samples),
            "val/judge_conciseness": fmean(s.judge.conciseness for s in samples),
            "val/identification": fmean(float(s.identified) for s in samples),
            "val/laterality_errors": float(sum(s.laterality_error for s in samples)),
        }, on_epoch=True, rank_zero_only=True)
