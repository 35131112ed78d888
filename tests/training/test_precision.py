"""The trainer's precision: bf16-true keeps float64 batch values and float32 rotary frequencies, counts stay exact
under a bf16 default dtype, and ``precision: auto`` with ``model.dtype: auto`` on a GPU never trains bf16 weights
with plain AdamW."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch
from PIL import Image

from cme_vlm.config import load_config
from cme_vlm.config_files import REPO_ROOT
from cme_vlm.errors import ConfigError
from cme_vlm.models.encoding import ChatEncoder
from cme_vlm.schema import Optimizer
from cme_vlm.training.sft_module import SFTModule
from cme_vlm.training.trainer import build_trainer


def _paper(stage: str):
    """The paper config's stage settings (bf16-true, Kahan AdamW, gradient release), on the CPU."""
    cfg = load_config(REPO_ROOT / "experiments" / "paper.yaml", ["model=tiny", "wandb.mode=disabled"])
    return cfg, replace(getattr(cfg, stage), accelerator="cpu")


def test_bf16_true_leaves_float64_batch_values_exact_and_casts_the_model_inputs(tmp_path):
    cfg, train = _paper("dpo")
    trainer = build_trainer(train, cfg, tmp_path, 1, "dpo")
    batch = {"ref_logp_accepted": torch.tensor([-300.7, -12.3456789], dtype=torch.float64),
             "pixel_values": torch.rand(4, 8), "input_ids": torch.tensor([[1, 2, 3]])}
    seen = trainer.precision_plugin.convert_input(batch)
    assert seen["ref_logp_accepted"].dtype == torch.float64
    assert torch.equal(seen["ref_logp_accepted"], batch["ref_logp_accepted"])  # bf16 would read -300.0
    assert seen["pixel_values"].dtype == torch.bfloat16 and seen["input_ids"].dtype == torch.int64


def test_bf16_true_keeps_the_rotary_frequencies_float32_when_it_converts_the_module(tiny_loaded, tmp_path):
    cfg, train = _paper("sft")
    trainer = build_trainer(train, cfg, tmp_path, 1, "sft")
    module = SFTModule(copy.deepcopy(tiny_loaded.model), tiny_loaded.adapter, train, 1)
    converted = trainer.precision_plugin.convert_module(module)
    before = dict(tiny_loaded.model.named_buffers())
    for name, buffer in converted.model.named_buffers():
        assert buffer.dtype == torch.float32 and torch.equal(buffer, before[name]), name
    assert {p.dtype for p in converted.model.parameters()} == {torch.bfloat16}
    assert converted.train_loss.total.dtype == torch.float64  # the metrics keep theirs


def test_micro_batch_counts_stay_exact_under_the_bf16_default_dtype(tiny_loaded, tmp_path):
    cfg, train = _paper("sft")
    trainer = build_trainer(train, cfg, tmp_path, 1, "sft")
    encoder, image = ChatEncoder(tiny_loaded, 2048), Image.new("RGB", (112, 112), (20, 200, 20))
    words = "the pancreas lies below"
    while True:  # an answer-token count that bf16 cannot hold (above 256 and not a multiple of 2)
        batch = encoder.encode([image], ["Which?"], [words])
        n = int((batch["labels"] != -100).sum())
        if n > 256 and float(torch.tensor(float(n), dtype=torch.bfloat16)) != n:
            break
        words += " and the duodenum"
    module = SFTModule(copy.deepcopy(tiny_loaded.model), tiny_loaded.adapter, train, 1)
    with torch.no_grad(), trainer.precision_plugin.forward_context():  # Lightning's context around training_step
        assert torch.get_default_dtype() == torch.bfloat16
        _, units = module.micro_batch_loss(batch)
    assert float(units) == n


@pytest.mark.parametrize(("optimizer", "precision", "weights"), [(Optimizer.adamw, "bf16-mixed", torch.float32),
                                                                 (Optimizer.kahan_adamw, "bf16-true", torch.bfloat16)])
def test_auto_precision_on_a_gpu_with_auto_dtype_weights_trains_no_bf16_weights_with_plain_adamw(
        tiny_cfg, monkeypatch, optimizer, precision, weights):
    from cme_vlm.models.loading import load_model
    from cme_vlm.training.precision import precision_plugin

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    model = load_model(replace(tiny_cfg, model=replace(tiny_cfg.model, dtype="auto"))).model
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}  # model.dtype auto on a GPU
    plugin = precision_plugin(replace(tiny_cfg.sft, precision="auto", optimizer=optimizer), "sft")
    assert plugin.precision == precision
    converted = plugin.convert_module(model)
    assert {p.dtype for p in converted.parameters()} == {weights}
    assert {b.dtype for b in converted.buffers()} == {torch.float32}


def test_plain_adamw_on_half_weights_and_the_loss_scaled_16_mixed_are_refused(tiny_cfg):
    from cme_vlm.training.precision import precision_plugin

    with pytest.raises(ConfigError, match="sft.optimizer=kahan_adamw"):
        precision_plugin(replace(tiny_cfg.sft, precision="bf16-true", optimizer=Optimizer.adamw), "sft")
    with pytest.raises(ConfigError, match="sft.precision=16-mixed is not one"):
        precision_plugin(replace(tiny_cfg.sft, precision="16-mixed"), "sft")
