"""``explain``'s peak on fake tensors agrees with a real run for every family; the cache's growth is counted."""

from __future__ import annotations

import pytest

from cme_vlm.bench.explain_memory import (
    cached_explain_memory,
    explain_key,
    measure_explain_memory,
    record_explain_memory,
)
from cme_vlm.config import load_config

FAMILIES = ["tiny", "tiny_gemma3", "tiny_internvl", "tiny_llava_onevision", "tiny_smolvlm", "tiny_qwen3_5"]


@pytest.mark.slow
@pytest.mark.parametrize("name", FAMILIES)
def test_fake_explain_peak_agrees_with_real_allocation(name, tmp_path):
    cfg = load_config(None, [f"model={name}"])
    fake = record_explain_memory(cfg, folder=tmp_path)
    real = measure_explain_memory(cfg, fake=False)
    assert fake.peak == pytest.approx(real.peak, rel=1e-3) and fake.shape == real.shape
    assert fake.parts["weights"] == real.parts["weights"] > 0 and fake.parts["gradients"] == 0
    assert cached_explain_memory(cfg, folders=(tmp_path,)) == fake


def test_the_explain_key_follows_the_answer_length_and_the_model():
    cfg = load_config(None, ["model=tiny"])
    assert explain_key(load_config(None, ["model=tiny", "eval.max_new_tokens=500"])) != explain_key(cfg)
    assert explain_key(load_config(None, ["model=tiny", "sft.lr=0.5"])) == explain_key(cfg)
    assert explain_key(load_config(None, ["model=tiny_gemma3"])) != explain_key(cfg)
