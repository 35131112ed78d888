"""Bench batches of every family: whole answers, and one clear error when max_length would cut them."""

from __future__ import annotations

from dataclasses import replace

import pytest
from tiny_families import tiny_model

from cme_vlm.bench.inputs import sft_batch
from cme_vlm.config import load_config
from cme_vlm.errors import ConfigError


def test_a_template_that_joins_the_answer_to_a_space_still_gives_whole_answers():
    """SmolVLM's "Assistant:" turn puts a space before the answer, which can merge with its first word."""
    cfg = load_config(None, ["model=tiny_smolvlm"])
    batch, shape = sft_batch(cfg, tiny_model("tiny_smolvlm"))
    assert shape.sequence_length < cfg.sft.max_length and shape.image_tokens > 0
    short = shape.sequence_length - 3  # room for the prompt, not for the whole answer
    with pytest.raises(ConfigError, match=f"max_length={short}"):
        sft_batch(replace(cfg, sft=replace(cfg.sft, max_length=short)), tiny_model("tiny_smolvlm"))
