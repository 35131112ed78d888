"""``cme-vlm train dpo``: direct preference optimisation of the SFT model on the preference pairs.

Writes ``out/checkpoints`` (a re-run resumes from ``last.ckpt``), ``out/model`` (Hugging Face
export, gathered to rank 0 under ``dpo.strategy=fsdp``), ``out/metrics.json`` (reward accuracy
and margin on the train and val pairs before and after training; the loss and the reward margin
of every optimizer step) and the resolved config. The trainer and export are the SFT stage's.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
from rich.console import Console
from torch import nn

from cme_vlm import atomic
from cme_vlm.callbacks import build_callbacks
from cme_vlm.config import save_config
from cme_vlm.data.preference_records import check_preference_dataset
from cme_vlm.data.records import load_dataset
from cme_vlm.models.encoding import ChatEncoder
from cme_vlm.models.export import export_model
from cme_vlm.models.freezing import apply_freezing, parameter_table
from cme_vlm.models.loading import LoadedModel, load_model
from cme_vlm.schema import ExperimentConfig, ReferenceMode
from cme_vlm.training.checkpoints import resume_checkpoint
from cme_vlm.training.datamodules import PreferenceDataModule
from cme_vlm.training.dpo_module import DPOModule, pair_metrics
from cme_vlm.training.reference import (
    AdapterDisabledReference,
    InMemoryReference,
    PrecomputedReference,
    Reference,
)
from cme_vlm.training.sharding import is_sharded, whole_model
from cme_vlm.training.trainer import build_trainer, fit, total_optimizer_steps

console = Console(stderr=True)


def make_reference(cfg: ExperimentConfig, model: Path, policy: nn.Module) -> Reference:
    """The reference ``dpo.reference`` selects; only ``in_memory`` loads a second model."""
    mode = ReferenceMode(cfg.dpo.reference)
    if mode is ReferenceMode.precomputed:
        return PrecomputedReference()
    if mode is ReferenceMode.adapter_disabled:
        return AdapterDisabledReference(policy)
    return InMemoryReference(load_model(cfg, model).model)


REPORT_PAIRS = 256  # per split: the report costs a forward pass, not a share of the 7B epoch


def _pair_report(module: DPOModule, data: PreferenceDataModule, trainer: L.Trainer) -> dict[str, dict[str, float]]:
    """Reward accuracy, margin and loss on up to ``REPORT_PAIRS`` train and val pairs, on the trainer's device."""
    device = None if is_sharded(module) else trainer.strategy.root_device  # a sharded module stays where it is
    splits = ["train", "val"] if len(data.val_set) else ["train"]
    return {s: pair_metrics(module, data.report_dataloader(s, REPORT_PAIRS), device) for s in splits}


def train_dpo(cfg: ExperimentConfig, dataset: Path, model: Path, out: Path, answered: Path | None = None) -> Path:
    """DPO from the SFT model in ``model`` on the pairs in ``dataset``; return the exported model folder.

    ``answered``: the answered instruction dataset, whose val records the judge and per-structure
    callbacks answer at each validation (as in SFT); without it only the ablation callback runs.
    """
    out, train = Path(out), cfg.dpo
    pairs = load_dataset(dataset, "preference dataset")
    check_preference_dataset(pairs, f"preference dataset '{dataset}'", train.reference == ReferenceMode.precomputed)
    resume = resume_checkpoint(out, train, "dpo")
    L.seed_everything(train.seed, workers=True, verbose=False)
    loaded = load_model(cfg, model)
    policy = apply_freezing(loaded.model, loaded.adapter, train.freezing)
    console.print(parameter_table(policy, loaded.adapter, train.freezing))
    data = PreferenceDataModule(pairs, ChatEncoder(loaded, train.max_length), train)
    total = total_optimizer_steps(train, len(data.train_dataloader()))
    module = DPOModule(policy.train(), train, make_reference(cfg, model, policy), total)
    records = load_dataset(answered, "answered dataset") if answered else None
    logged = build_callbacks(cfg, LoadedModel(policy, loaded.processor, loaded.adapter), records)
    trainer = build_trainer(train, cfg, out, total, "dpo", logged)
    before = _pair_report(module, data, trainer)
    fit(trainer, module, data, resume)
    # under FSDP every rank takes part in the report and in gathering the weights
    after = _pair_report(module, data, trainer) if is_sharded(module) or trainer.is_global_zero else {}
    trained = whole_model(module, lambda: apply_freezing(load_model(cfg, model).model, loaded.adapter, train.freezing))
    if trainer.is_global_zero:
        export_model(trained, loaded.processor, out / "model", train.freezing.merge_lora_on_export)
        metrics = {"before": before, "after": after, "train_loss": module.history["train_loss"],
                   "train_margin": module.history["train_margin"],
                   "steps": module.global_step, "reference": str(ReferenceMode(train.reference).value)}
        atomic.write_json(out / "metrics.json", metrics)
        save_config(cfg, out)
        console.print(f"[green]DPO[/] reward accuracy on train pairs {before['train']['reward_accuracy']:.2f} -> "
                      f"{after['train']['reward_accuracy']:.2f}; model -> {out / 'model'}")
    return out / "model"
