"""Numerical faults: a NaN or inf loss stops SFT with the step and the batch's records, after saving the last good state."""

from __future__ import annotations

import csv
import math
import re

import pytest
import torch

from cme_vlm.config import load_config
from cme_vlm.data.records import load_dataset, save_dataset
from cme_vlm.errors import TrainingError
from cme_vlm.training import sft_stage, trainer
from cme_vlm.training.sft_module import LAST_GOOD

POISONED_STEP = 3  # the third training forward pass returns non-finite hidden states


@pytest.fixture(scope="module")
def answered(built_dataset, tmp_path_factory):
    ds = load_dataset(built_dataset)
    ds = ds.map(lambda r: {"answer": f"The {r['structure'].replace('_', ' ')}.", "provenance": "teacher"},
                input_columns=None, features=ds.features)
    return save_dataset(ds, tmp_path_factory.mktemp("answered"))


def _poison(monkeypatch, value: float) -> None:
    """Load the model as the stage does, with a forward hook that poisons the hidden states of one training step."""
    load_model = sft_stage.load_model
    seen = {"training_forwards": 0}

    def poisoned(cfg, path=None):
        loaded = load_model(cfg, path)

        def hook(module, inputs, output):
            if module.training:
                seen["training_forwards"] += 1
                if seen["training_forwards"] == POISONED_STEP:
                    output.last_hidden_state = output.last_hidden_state * value
            return output

        loaded.model.model.register_forward_hook(hook)  # the decoder whose hidden states the loss reads
        return loaded

    monkeypatch.setattr(sft_stage, "load_model", poisoned)


def _csv_logger(monkeypatch) -> None:
    from lightning.pytorch.loggers import CSVLogger

    monkeypatch.setattr(trainer, "wandb_logger", lambda wandb, cfg, out, job: CSVLogger(str(out), name="csv"))


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_non_finite_loss_stops_with_step_and_records_after_saving_the_last_good_state(answered, tmp_path, monkeypatch, value):
    cfg = load_config(None, ["sft.batch_size=4", "sft.epochs=1", "sft.max_steps=6", "sft.checkpoint_every_n_steps=1",
                             "sft.log_every_n_steps=1", "wandb.mode=offline"])
    _poison(monkeypatch, value)
    _csv_logger(monkeypatch)
    out = tmp_path / "03-sft"
    with pytest.raises(TrainingError) as stopped:
        sft_stage.train_sft(cfg, answered, out)
    message = str(stopped.value)
    step = POISONED_STEP - 1  # two good steps were taken before the poisoned forward pass
    assert f"at optimizer step {step} " in message
    ids = re.search(r"on records ([\w, ]+)\.", message).group(1).split(", ")
    train_ids = {r for r, s in zip(load_dataset(answered)["id"], load_dataset(answered)["split"]) if s == "train"}
    assert len(ids) == cfg.sft.batch_size and set(ids) <= train_ids
    assert _batch_ids(cfg, answered, POISONED_STEP - 1) == ids  # exactly the batch that was poisoned
    assert str(out / "checkpoints" / LAST_GOOD) in message

    good = torch.load(out / "checkpoints" / LAST_GOOD, weights_only=False)
    periodic = torch.load(out / "checkpoints" / f"step={step}.ckpt", weights_only=False)
    assert good["global_step"] == step
    for name, tensor in good["state_dict"].items():
        assert torch.isfinite(tensor).all(), name
        assert torch.equal(tensor, periodic["state_dict"][name]), name  # the state after the last good step
    assert not (out / "model").exists()  # no export of a broken model

    rows = list(csv.DictReader(open(next(out.rglob("metrics.csv")))))
    norms = [float(r["train/grad_norm"]) for r in rows if r.get("train/grad_norm")]
    assert len(norms) == step and all(math.isfinite(n) and n > 0 for n in norms)


def _batch_ids(cfg, dataset, index: int) -> list[str]:
    """The record ids of training batch ``index`` in the order the stage's data module yields them."""
    from cme_vlm.models.encoding import ChatEncoder
    from cme_vlm.models.loading import load_model
    from cme_vlm.training.datamodules import SFTDataModule

    data = SFTDataModule(load_dataset(dataset), ChatEncoder(load_model(cfg), cfg.sft.max_length), cfg.sft)
    data.setup("fit")
    for i, batch in enumerate(data.train_dataloader()):
        if i == index:
            return list(batch["ids"])
    raise AssertionError(f"no batch {index}")
