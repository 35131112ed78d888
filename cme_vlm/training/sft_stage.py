"""``cme-vlm train sft``: fine-tune the base model on the teacher's answers.

Writes ``out/checkpoints`` (Lightning; a re-run resumes from ``last.ckpt``, a folder of shards
under ``sft.strategy=fsdp``), ``out/model`` (Hugging Face export with processor; under FSDP the
weights are first gathered to rank 0), ``out/metrics.json`` and the resolved config.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
from rich.console import Console

from cme_vlm import atomic
from cme_vlm.callbacks import build_callbacks
from cme_vlm.config import save_config
from cme_vlm.data.records import load_dataset
from cme_vlm.models.encoding import ChatEncoder
from cme_vlm.models.export import export_model
from cme_vlm.models.freezing import apply_freezing, parameter_table
from cme_vlm.models.loading import LoadedModel, load_model
from cme_vlm.schema import ExperimentConfig
from cme_vlm.training.datamodules import SFTDataModule
from cme_vlm.training.sft_module import SFTModule
from cme_vlm.training.sharding import whole_model
from cme_vlm.training.trainer import (
    build_trainer,
    fit,
    resume_checkpoint,
    total_optimizer_steps,
)

console = Console(stderr=True)


def train_sft(cfg: ExperimentConfig, dataset: Path, out: Path) -> Path:
    """Fine-tune ``cfg.model`` on the answered records in ``dataset``; return the exported model folder."""
    out = Path(out)
    train = cfg.sft
    resume = resume_checkpoint(out, train, "sft")
    L.seed_everything(train.seed, workers=True, verbose=False)
    loaded = load_model(cfg)
    model = apply_freezing(loaded.model, loaded.adapter, train.freezing)
    console.print(parameter_table(model, loaded.adapter, train.freezing))
    records = load_dataset(dataset, "--dataset")
    data = SFTDataModule(records, ChatEncoder(loaded, train.max_length), train)
    data.setup("fit")
    total = total_optimizer_steps(train, len(data.train_dataloader()))
    module = SFTModule(model.train(), loaded.adapter, train, total, str(out / "checkpoints"))
    logged = build_callbacks(cfg, LoadedModel(model, loaded.processor, loaded.adapter), records)
    trainer = build_trainer(train, cfg, out, total, "sft", logged)
    fit(trainer, module, data, resume)
    # the final state, wherever periodic saves stopped (weights_only=False: optimizer state too, said explicitly)
    trainer.save_checkpoint(out / "checkpoints" / "last.ckpt", weights_only=False)
    trained = whole_model(module, lambda: apply_freezing(load_model(cfg).model, loaded.adapter, train.freezing))
    if trainer.is_global_zero:
        export_model(trained, loaded.processor, out / "model", train.freezing.merge_lora_on_export)
        _write_metrics(module, out)
        save_config(cfg, out)
    return out / "model"


def _write_metrics(module: SFTModule, out: Path) -> None:
    val = module.history["val_loss"]
    metrics = {
        "train_loss": module.history["train_loss"],
        "val_loss": val,
        "initial_val_loss": val[0][1] if val else None,
        "final_val_loss": val[-1][1] if val else None,
        "steps": module.global_step,
    }
    atomic.write_json(out / "metrics.json", metrics)
