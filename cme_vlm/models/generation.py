"""Answers of a loaded model: prompts encoded in its chat format, batched by length, decoded from a shared prefix."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from PIL import Image
from transformers import BatchFeature

from cme_vlm.models.decoding import Draw, SharedPrefix, StaticCaches
from cme_vlm.models.loading import LoadedModel
from cme_vlm.schema import GenerationConfig


def prompt_texts(loaded: LoadedModel, prompts: list[str]) -> list[str]:
    """Each prompt in the family's chat format, ending where the assistant's answer begins."""
    return [
        loaded.processor.apply_chat_template(loaded.adapter.messages(p), add_generation_prompt=True, tokenize=False)
        for p in prompts
    ]


def encode_prompts(loaded: LoadedModel, images: list[Image.Image], prompts: list[str]) -> BatchFeature:
    """The processor's left-padded batch of one image and one chat prompt per record.

    Left padding: every row's answer starts at the same position.
    """
    loaded.processor.tokenizer.padding_side = "left"
    return loaded.processor(text=prompt_texts(loaded, prompts), images=[[im] for im in images], padding=True,
                            return_tensors="pt")


def length_order(loaded: LoadedModel, prompts: Sequence[str]) -> list[int]:
    """Indices of ``prompts`` from the shortest chat prompt to the longest (ties keep their order).

    Batches cut from this order carry little padding. Only the text is counted: the frames of one
    dataset share their size, so their image tokens add the same number to every prompt.
    """
    if not prompts:  # a resumed stage may have nothing left to answer
        return []
    lengths = [len(ids) for ids in loaded.tokenizer(prompt_texts(loaded, list(prompts)))["input_ids"]]
    return sorted(range(len(prompts)), key=lengths.__getitem__)


def length_batches(loaded: LoadedModel, prompts: Sequence[str], batch_size: int) -> Iterator[list[int]]:
    """Batches of at most ``batch_size`` indices of ``prompts``, each of prompts of similar length."""
    order = length_order(loaded, prompts)
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


def prefill(
    loaded: LoadedModel, images: list[Image.Image], prompts: list[str], generation: GenerationConfig,
    caches: StaticCaches | None = None,
) -> SharedPrefix:
    """Encode the (image, prompt) records (left-padded) and prefill them once for any number of draws.

    ``caches``: the static caches of the caller's earlier batches, to decode into again.
    """
    if len(images) != len(prompts):
        raise ValueError(f"prefill got {len(images)} images but {len(prompts)} prompts")
    return SharedPrefix(loaded, dict(encode_prompts(loaded, images, prompts)), generation, caches)


def generate(
    loaded: LoadedModel,
    images: list[Image.Image],
    prompts: list[str],
    max_new_tokens: int = 160,
    batch_size: int = 8,
    generation: GenerationConfig | None = None,
) -> list[str]:
    """The greedy answer to each (image, prompt), in the given order; batches are cut by prompt length."""
    generation = generation or GenerationConfig()
    answers = [""] * len(prompts)
    caches = StaticCaches()
    for batch in length_batches(loaded, prompts, batch_size):
        prefix = prefill(loaded, [images[i] for i in batch], [prompts[i] for i in batch], generation, caches)
        for i, answer in zip(batch, prefix.answers([Draw(j) for j in range(len(batch))], max_new_tokens), strict=True):
            answers[i] = answer
    return answers
