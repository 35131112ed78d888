"""Greedy answers of every family equal plain transformers ``generate`` in both cache modes; batches by length keep
the caller's order."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from PIL import Image
from tiny_families import TINY_FAMILIES, tiny_model

from cme_vlm.models.generation import generate, length_order, prompt_texts
from cme_vlm.schema import CacheKind, GenerationConfig, Switch

IMAGES = [Image.new("RGB", (112, 112), (0, 200, 0)), Image.new("RGB", (160, 96), (120, 40, 40)),
          Image.new("RGB", (112, 112), (20, 20, 220))]
PROMPTS = ["What is the highlighted structure, and why does it matter?", "Name it.", "Which structure is highlighted?"]


def plain_generate(loaded, images, prompts, max_new_tokens: int) -> list[str]:
    """transformers' own greedy ``generate`` on one left-padded batch, nothing of ours in between."""
    loaded.processor.tokenizer.padding_side = "left"
    batch = loaded.processor(text=prompt_texts(loaded, prompts), images=[[i] for i in images], padding=True,
                             return_tensors="pt")
    with torch.no_grad():
        out = loaded.model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False)
    return [t.strip() for t in loaded.processor.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)]


@pytest.mark.parametrize("cache", [CacheKind.dynamic, CacheKind.static])
@pytest.mark.parametrize("name", TINY_FAMILIES)
def test_greedy_equals_plain_transformers_generate(name, cache):
    loaded = tiny_model(name)
    expected = plain_generate(loaded, IMAGES, PROMPTS, 12)
    assert generate(loaded, IMAGES, PROMPTS, 12, 3, GenerationConfig(cache=cache)) == expected
    assert len(set(expected)) == 3  # three different answers: a mix-up of the order would show


def test_batches_by_length_return_answers_in_the_given_order(tiny_loaded):
    assert length_order(tiny_loaded, PROMPTS) == [1, 2, 0]
    one_by_one = [plain_generate(tiny_loaded, [i], [p], 8)[0] for i, p in zip(IMAGES, PROMPTS)]
    assert generate(tiny_loaded, IMAGES, PROMPTS, 8, batch_size=2) == one_by_one
    assert not tiny_loaded.model.training


def test_generate_restores_training_mode(tiny_loaded):
    tiny_loaded.model.train()
    try:
        generate(tiny_loaded, IMAGES[:1], PROMPTS[:1], 2)
        assert tiny_loaded.model.training
    finally:
        tiny_loaded.model.eval()


@pytest.mark.slow
def test_compiled_decode_step_gives_the_same_tokens(tiny_loaded):
    """``generation.compile=always`` compiles the decode step even on CPU (slower there; ~30 s to compile)."""
    compiled = GenerationConfig(cache=CacheKind.static, compile=Switch.always)
    # a copy: transformers keeps the compiled call on the model, which then no longer pickles (DDP spawn tests)
    loaded = dataclasses.replace(tiny_loaded, model=copy.deepcopy(tiny_loaded.model))
    assert generate(loaded, IMAGES, PROMPTS, 12, 3, compiled) == plain_generate(tiny_loaded, IMAGES, PROMPTS, 12)


def test_nothing_left_to_answer_orders_to_nothing(tiny_loaded):
    assert length_order(tiny_loaded, []) == [] and generate(tiny_loaded, [], [], 4, 2) == []
