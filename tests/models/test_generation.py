"""Greedy answers of every family equal plain transformers ``generate`` in both cache modes; batches by length keep
the caller's order."""

from __future__ import annotations

import copy
import dataclasses
import functools

import pytest
import torch
from PIL import Image
from transformers import CompileConfig
from tiny_families import TINY_FAMILIES, tiny_model

from cme_vlm.models import decoding
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
    """``generation.compile=always`` compiles the decode step even on CPU (slower there; ~60 s to compile its
    dynamic shapes with a cold inductor cache on 2 cores)."""
    compiled = GenerationConfig(cache=CacheKind.static, compile=Switch.always)
    # a copy: transformers keeps the compiled call on the model, which then no longer pickles (DDP spawn tests)
    loaded = dataclasses.replace(tiny_loaded, model=copy.deepcopy(tiny_loaded.model))
    assert generate(loaded, IMAGES, PROMPTS, 12, 3, compiled) == plain_generate(tiny_loaded, IMAGES, PROMPTS, 12)


def test_nothing_left_to_answer_orders_to_nothing(tiny_loaded):
    assert length_order(tiny_loaded, []) == [] and generate(tiny_loaded, [], [], 4, 2) == []


class RecordingBackend:
    """A ``torch.compile`` backend that runs each graph as traced and keeps, per compilation, the key shapes SDPA reads."""

    def __init__(self) -> None:
        self.compilations: list[list[tuple[int, ...]]] = []

    def __deepcopy__(self, memo: dict) -> RecordingBackend:
        return self  # transformers deep-copies the compile options it passes to torch.compile

    def __call__(self, graph: torch.fx.GraphModule, example_inputs: list, **options) -> object:
        self.compilations.append([tuple(node.args[1].meta["example_value"].shape) for node in graph.graph.nodes
                                  if node.op == "call_function" and "scaled_dot_product" in str(node.target)])
        return graph.forward


@pytest.fixture(scope="module")
def compiled_evaluation(tiny_loaded):
    """An evaluation's decoding with ``generation.compile=always``: three models of one architecture (base, SFT,
    DPO), each over two batches of two with caches of different lengths and a last batch of one; every
    compilation recorded."""
    backend = RecordingBackend()
    compiled = GenerationConfig(cache=CacheKind.static, compile=Switch.always)
    long = " ".join(["Explain the highlighted structure, its relation to the plane and what the surgeon must avoid."] * 6)
    images, prompts = IMAGES + IMAGES[:2], PROMPTS + [long, long + " Briefly."]  # caches of 64 and 128 tokens
    torch._dynamo.reset()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(decoding, "CompileConfig", functools.partial(CompileConfig, backend=backend))
        answers = [generate(dataclasses.replace(tiny_loaded, model=copy.deepcopy(tiny_loaded.model)), images, prompts,
                            6, 2, compiled) for _ in range(3)]
    torch._dynamo.reset()
    return backend, answers, plain_generate(tiny_loaded, images, prompts, 6)


@pytest.mark.slow
def test_one_compilation_per_shape_family_for_all_models(compiled_evaluation):
    """The trap: a compilation for every new batch size or cache length (40-120 s each on a GPU), up to the
    recompile limit. Dynamic shapes: one graph for batches above one, one for batch one, kept across models."""
    backend, answers, expected = compiled_evaluation
    assert len(backend.compilations) == 2
    assert answers == [expected] * 3


@pytest.mark.slow
def test_compiled_decode_reads_each_kv_head_once(compiled_evaluation, tiny_loaded):
    """The trap: under ``torch.compile`` transformers' SDPA repeats the keys and values per query head (7 copies
    of the KV cache a step on the 7B); the compiled step's attention reads the ``num_key_value_heads`` heads."""
    backend, _, _ = compiled_evaluation
    text = tiny_loaded.model.config.text_config
    assert text.num_key_value_heads < text.num_attention_heads
    shapes = [shape for graph in backend.compilations for shape in graph]
    assert shapes and all(shape[1] == text.num_key_value_heads for shape in shapes)
