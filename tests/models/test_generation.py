"""Batched greedy and seeded sampled generation with the tiny model."""

from __future__ import annotations

from PIL import Image

from cme_vlm.models.generation import generate
from cme_vlm.schema import SamplingSetting

IMAGES = [Image.new("RGB", (112, 112), (0, 200, 0)), Image.new("RGB", (160, 96), (120, 40, 40)),
          Image.new("RGB", (112, 112), (20, 20, 220))]
PROMPTS = ["Which structure is highlighted?", "Name it.", "What is the highlighted structure, and why does it matter?"]


def test_batched_greedy_equals_one_by_one(tiny_loaded):
    batched = generate(tiny_loaded, IMAGES, PROMPTS, max_new_tokens=8, batch_size=3)
    single = [generate(tiny_loaded, [i], [p], max_new_tokens=8)[0] for i, p in zip(IMAGES, PROMPTS)]
    assert batched == single
    assert any(batched)
    assert not tiny_loaded.model.training


def test_sampling_is_seeded(tiny_loaded):
    a = generate(tiny_loaded, IMAGES, PROMPTS, SamplingSetting(temperature=1.5, seed=1), max_new_tokens=8)
    b = generate(tiny_loaded, IMAGES, PROMPTS, SamplingSetting(temperature=1.5, seed=1), max_new_tokens=8)
    c = generate(tiny_loaded, IMAGES, PROMPTS, SamplingSetting(temperature=1.5, seed=2), max_new_tokens=8)
    assert a == b
    assert a != c
