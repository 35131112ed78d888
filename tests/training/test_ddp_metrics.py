"""Validation figures synchronised over data-parallel ranks: two gloo CPU processes report what one process does."""

from __future__ import annotations

import copy
from typing import Any

import lightning as L
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from cme_vlm.data.preference_records import preference_dataset, preference_row
from cme_vlm.models.encoding import ChatEncoder, collate_pairs
from cme_vlm.models.logprobs import answer_logprobs
from cme_vlm.preference.reference import precompute_reference
from cme_vlm.schema import DPOConfig, TrainConfig
from cme_vlm.training.dpo_module import DPOModule
from cme_vlm.training.reference import PrecomputedReference
from cme_vlm.training.sft_module import SFTModule

ANSWERS = ["The duodenum.", "The inferior mesenteric vein, ligated high below the pancreas in left-sided CME.",
           "Angel's hair.", "The pancreas, whose lower border marks the level of the ligation."]


def _validate(module: L.LightningModule, batches: list[dict[str, Any]], devices: int) -> dict[str, float]:
    trainer = L.Trainer(accelerator="cpu", devices=devices, strategy="ddp_spawn" if devices > 1 else "auto",
                        logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    (results,) = trainer.validate(module, dataloaders=DataLoader(batches, batch_size=None), verbose=False)
    return results


def _mixed_pairs(n: int):
    """Pairs whose accepted answer is the long one in even rows and the short one in odd rows: whichever way a
    perturbation moves the two answers' log-probs, the margins take both signs and the reward accuracy lies
    strictly between 0 and 1."""
    rows = []
    for i in range(n):
        record = {"id": f"r{i}", "structure": "duodenum", "side": "right", "phase": "p", "split": "train",
                  "prompt": "What is highlighted?", "overlay": Image.new("RGB", (112, 112), (30 * i, 120, 80))}
        long, short = f"The duodenum, exposed in right-sided CME {i}.", "Mesentery."
        rows.append(preference_row(record, *((long, short) if i % 2 == 0 else (short, long)), judge="rubric"))
    return preference_dataset(rows)


def _perturbed(model: torch.nn.Module) -> torch.nn.Module:
    """A policy that differs from its reference, so rewards, margins and accuracy are not all zero."""
    model = copy.deepcopy(model).train()
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


@pytest.mark.slow
def test_sft_and_dpo_validation_figures_equal_on_one_and_two_processes(tiny_loaded):
    encoder = ChatEncoder(tiny_loaded, 512)
    image = Image.new("RGB", (112, 112), (40, 160, 60))
    # answers of different lengths: a per-batch mean averaged over ranks would differ from the per-token mean
    sft_batches = [encoder.encode([image] * 2, ["Which structure?"] * 2, [ANSWERS[i], ANSWERS[(i + 1) % 4]])
                   for i in range(4)]
    pairs = precompute_reference(tiny_loaded, _mixed_pairs(8), batch_size=8, max_length=512)
    pair_batches = []
    for rows in ([0], [1, 2], [3, 4, 5], [6, 7]):
        batch = collate_pairs(encoder, [pairs[i] for i in rows])
        batch["ids"] = [pairs[i]["id"] for i in rows]
        pair_batches.append(batch)
    train = TrainConfig(precision="32-true")
    sft = SFTModule(_perturbed(tiny_loaded.model), tiny_loaded.adapter, train, total_steps=1)
    dpo = DPOModule(_perturbed(tiny_loaded.model), DPOConfig(precision="32-true", beta=0.5), PrecomputedReference(), 1)

    figures = {}
    for module, batches, names in ((sft, sft_batches, ["val/loss"]),
                                   (dpo, pair_batches, ["val/loss", "val/rewards/accuracy", "val/rewards/margin",
                                                        "val/rewards/accepted", "val/logps/rejected"])):
        one, two = _validate(module, batches, 1), _validate(module, batches, 2)
        assert set(names) <= set(one)
        for name in names:
            assert two[name] == pytest.approx(one[name], rel=1e-5, abs=1e-6), name
        figures[module.stage] = one

    with torch.no_grad():
        per_batch = [-answer_logprobs(sft.model.eval(), b).token_logp for b in sft_batches]
    assert figures["sft"]["val/loss"] == pytest.approx(float(torch.cat(per_batch).mean()), rel=1e-5)  # per token
    assert figures["sft"]["val/loss"] != pytest.approx(sum(float(t.mean()) for t in per_batch) / 4, rel=1e-4)
    assert 0 < figures["dpo"]["val/rewards/accuracy"] < 1
