"""Draws continued from a shared prefix, for every family: the same tokens as a separate ``generate``, one prefill,
exact lengths."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from unittest import mock

import pytest
import torch
from forward_counts import counting_forwards
from op_counts import CountingHostReads
from PIL import Image
from tiny_families import TINY_FAMILIES, tiny_model
from transformers import StaticCache

from cme_vlm.config import load_config
from cme_vlm.errors import ConfigError, ModelError
from cme_vlm.models import decoding
from cme_vlm.models.decoding import DecodeMode, Draw
from cme_vlm.models.generation import encode_prompts, generate, prefill, prompt_texts
from cme_vlm.models.loading import load_model
from cme_vlm.schema import CacheKind, GenerationConfig, SamplingSetting, Switch

IMAGES = [Image.new("RGB", (112, 112), (0, 200, 0)), Image.new("RGB", (160, 96), (120, 40, 40))]
PROMPTS = ["What is the highlighted structure, and why does it matter?", "Name it."]  # different padding and rope deltas
HOT = SamplingSetting(temperature=1.3, top_p=0.95, top_k=0, seed=7)


def separate_greedy(loaded, max_new_tokens: int) -> torch.Tensor:
    """Each record alone through plain transformers ``generate``: its new tokens, padded to ``max_new_tokens``."""
    rows = []
    for image, prompt in zip(IMAGES, PROMPTS):
        batch = loaded.processor(text=prompt_texts(loaded, [prompt]), images=[[image]], return_tensors="pt")
        with torch.no_grad():
            out = loaded.model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False)
        rows.append(out[0, batch["input_ids"].shape[1]:])
    pad = loaded.tokenizer.pad_token_id
    return torch.stack([torch.cat([r, r.new_full((max_new_tokens - len(r),), pad)]) for r in rows])


@pytest.mark.parametrize("cache", [CacheKind.dynamic, CacheKind.static])
@pytest.mark.parametrize("name", TINY_FAMILIES)
def test_greedy_draws_from_the_prefix_equal_separate_generation(name, cache):
    loaded = tiny_model(name)
    prefix = prefill(loaded, IMAGES, PROMPTS, GenerationConfig(cache=cache))
    expected = separate_greedy(loaded, 10)
    tokens = prefix.new_tokens([Draw(1), Draw(0), Draw(1), Draw(0, HOT)], 10)  # K rows per record, any order
    assert torch.equal(tokens[[1, 0, 2]], expected[[0, 1, 1]])
    assert not torch.equal(tokens[3], expected[0])  # the sampled row of record 0 left the greedy path


@contextmanager
def next_token_logits(model: torch.nn.Module) -> Iterator[list[torch.Tensor]]:
    """The logits of the last position of every forward pass of ``model`` while open: one per decoded token."""
    seen: list[torch.Tensor] = []
    hook = model.register_forward_hook(lambda module, args, out: seen.append(out.logits[:, -1].detach().clone()))
    try:
        yield seen
    finally:
        hook.remove()


@pytest.mark.parametrize("name", TINY_FAMILIES)
def test_each_step_sees_what_plain_generate_sees(name):
    """The distributions, not only their argmax: a prefill at other positions than ``generate``'s would shift them."""
    loaded = tiny_model(name)
    with next_token_logits(loaded.model) as plain:
        batch = encode_prompts(loaded, IMAGES, PROMPTS)  # left-padded: the second record's positions start later
        with torch.no_grad():
            loaded.model.generate(**batch, max_new_tokens=4, do_sample=False, min_new_tokens=4)
    prefix = prefill(loaded, IMAGES, PROMPTS, GenerationConfig())
    with next_token_logits(loaded.model) as ours:
        prefix.new_tokens([Draw(0), Draw(1)], 4)
    assert len(ours) == len(plain) == 4
    for step, (a, b) in enumerate(zip(ours, plain, strict=True)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=f"step {step}")


def test_a_prompt_beyond_the_sliding_window_decodes_alike_or_is_refused_a_static_cache():
    """Gemma 3 keeps only the last ``sliding_window`` keys in its local layers: the prefix rows keep what the model kept."""
    loaded = load_model(load_config(None, ["model=tiny_gemma3", "model.architecture.text_config.sliding_window=8"]))
    expected = separate_greedy(loaded, 6)
    prefix = prefill(loaded, IMAGES, PROMPTS, GenerationConfig(cache=CacheKind.dynamic))
    assert prefix.inputs["input_ids"].shape[1] > 8
    assert torch.equal(prefix.new_tokens([Draw(0), Draw(1)], 6), expected)
    static = prefill(loaded, IMAGES, PROMPTS, GenerationConfig(cache=CacheKind.static))
    with pytest.raises(ModelError, match="generation.cache=dynamic"):
        static.new_tokens([Draw(0)], 6)


def test_continuing_needs_the_prefill_rotary_offsets(tiny_loaded):
    """Qwen-VL's image positions make ``rope_deltas`` non-zero; continuing without them decodes something else."""
    prefix = prefill(tiny_loaded, IMAGES, PROMPTS, GenerationConfig())
    assert (prefix.rope_deltas != 0).all()
    prefix.rope_deltas = torch.zeros_like(prefix.rope_deltas)
    assert not torch.equal(prefix.new_tokens([Draw(0), Draw(1)], 10), separate_greedy(tiny_loaded, 10))


@pytest.mark.parametrize("name", TINY_FAMILIES)
def test_one_vision_pass_and_one_prefill_for_all_draws(name):
    loaded = tiny_model(name)
    with counting_forwards(loaded) as counts:
        prefix = prefill(loaded, IMAGES, PROMPTS, GenerationConfig())
        prefix.new_tokens([Draw(r, dataclasses.replace(HOT, seed=s)) for r in (0, 1) for s in range(5)], 6)
        prefix.new_tokens([Draw(0, HOT)], 6)  # a re-sample from the same prefix
    assert len(counts.vision_pixels) == 1  # both records' images, once
    assert counts.prefill_rows == [2]  # one multi-token forward, over the two records only


def test_seeded_draws_repeat_and_ignore_their_neighbours(tiny_loaded):
    prefix = prefill(tiny_loaded, IMAGES, PROMPTS, GenerationConfig())
    alone = prefix.new_tokens([Draw(0, HOT)], 8)
    crowded = prefix.new_tokens([Draw(1, HOT), Draw(0, dataclasses.replace(HOT, seed=8)), Draw(0, HOT)], 8)
    assert torch.equal(crowded[2], alone[0])
    assert not torch.equal(crowded[1], alone[0])


@pytest.mark.parametrize("cache", [CacheKind.dynamic, CacheKind.static])
def test_max_new_tokens_is_exact(tiny_loaded, cache):
    prefix = prefill(tiny_loaded, IMAGES, PROMPTS, GenerationConfig(cache=cache))
    end, pad = tiny_loaded.model.generation_config.eos_token_id, tiny_loaded.tokenizer.pad_token_id
    for n in (1, 7):
        tokens = prefix.new_tokens([Draw(0), Draw(1), Draw(0, HOT)], n)
        assert tokens.shape == (3, n)  # random weights: no row ends early at these lengths
        assert not ((tokens == end) | (tokens == pad)).any()


def test_decode_mode_resolves_auto_per_device():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    auto = GenerationConfig()
    assert DecodeMode.resolve(auto, cpu) == DecodeMode(static_cache=False, compiled=False)
    assert DecodeMode.resolve(auto, cuda) == DecodeMode(static_cache=True, compiled=True)
    assert DecodeMode.resolve(GenerationConfig(cache=CacheKind.dynamic), cuda) == DecodeMode(False, False)
    assert DecodeMode.resolve(GenerationConfig(compile=Switch.never), cuda) == DecodeMode(True, False)
    forced = DecodeMode.resolve(GenerationConfig(compile=Switch.always), cpu)
    assert forced == DecodeMode(True, True) and forced.generate_kwargs(cpu)["compile_config"]._compile_all_devices
    assert DecodeMode.resolve(GenerationConfig(cache=CacheKind.static), cpu).generate_kwargs(cpu) == {"disable_compile": True}
    with pytest.raises(ConfigError, match="generation.cache=static"):
        load_config(None, ["generation.compile=always", "generation.cache=dynamic"])


def test_one_static_cache_for_all_batches_of_a_shape(tiny_loaded):
    """The trap: a new static cache for every batch, so a compiled step records its CUDA graph again each time."""
    static = GenerationConfig(cache=CacheKind.static)
    expected = generate(tiny_loaded, IMAGES[:1] * 2, PROMPTS[:1] * 2, 5, 1, static)  # two batches of one shape
    with mock.patch.object(decoding, "StaticCache", wraps=StaticCache) as built:
        assert generate(tiny_loaded, IMAGES[:1] * 2, PROMPTS[:1] * 2, 5, 1, static) == expected
    assert built.call_count == 1  # emptied and refilled for the second batch, with the same tokens


def test_one_host_read_per_decode_step(tiny_loaded):
    """Sampled and greedy rows with the static cache (the CUDA default): the decode loop reads the device once a
    step, transformers' stop check; the sampler reads nothing. (With the dynamic cache, the CPU default,
    transformers also checks the padding of a padded batch every step.)"""
    prefix = prefill(tiny_loaded, IMAGES, PROMPTS, GenerationConfig(cache=CacheKind.static))
    draws = [Draw(0), Draw(1, HOT), Draw(0, dataclasses.replace(HOT, top_k=5, seed=9))]
    reads = []
    for n in (1, 9):
        with CountingHostReads() as counted:
            prefix.new_tokens(draws, n)
        reads.append(counted.count)
    assert (reads[1] - reads[0]) / 8 == 1
