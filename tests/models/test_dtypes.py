"""A model cast to bf16 keeps its rotary frequencies float32, as ``from_pretrained(dtype=bf16)`` leaves them."""

from __future__ import annotations

from dataclasses import replace

import torch

from cme_vlm.models.loading import load_model

# the tiny Qwen2.5-VL's rotary buffers: the language model's and the vision tower's
ROTARY = {"model.language_model.rotary_emb.inv_freq", "model.language_model.rotary_emb.original_inv_freq",
          "model.visual.rotary_pos_emb.inv_freq", "model.visual.rotary_pos_emb.original_inv_freq"}


def test_a_random_weight_build_in_bf16_keeps_the_rotary_frequencies_of_float32(tiny_cfg, tiny_loaded):
    bf16 = load_model(replace(tiny_cfg, model=replace(tiny_cfg.model, dtype="bfloat16"))).model
    assert {name for name, _ in bf16.named_buffers()} == ROTARY
    reference = dict(tiny_loaded.model.named_buffers())
    for name, buffer in bf16.named_buffers():
        assert buffer.dtype == torch.float32, name
        assert torch.equal(buffer, reference[name]), name
    assert {p.dtype for p in bf16.parameters()} == {torch.bfloat16}


def test_the_export_of_a_bf16_model_reloads_with_the_same_rotary_frequencies(tiny_cfg, tmp_path):
    from cme_vlm.models.export import export_model

    built = load_model(replace(tiny_cfg, model=replace(tiny_cfg.model, dtype="bfloat16")))
    reloaded = load_model(replace(tiny_cfg, model=replace(tiny_cfg.model, dtype="bfloat16")),
                          export_model(built.model, built.processor, tmp_path / "model")).model
    ours = dict(built.model.named_buffers())
    for name, buffer in reloaded.named_buffers():
        assert buffer.dtype == ours[name].dtype == torch.float32 and torch.equal(buffer, ours[name]), name
