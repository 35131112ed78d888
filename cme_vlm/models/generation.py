"""Batched generation with a loaded model: greedy, or seeded sampling from a ``SamplingSetting``."""

from __future__ import annotations

import torch
from PIL import Image

from cme_vlm.models.loading import LoadedModel
from cme_vlm.schema import SamplingSetting


def prompt_texts(loaded: LoadedModel, prompts: list[str]) -> list[str]:
    """Each prompt in the family's chat format, ending where the assistant's answer begins."""
    return [
        loaded.processor.apply_chat_template(loaded.adapter.messages(p), add_generation_prompt=True, tokenize=False)
        for p in prompts
    ]


def _sampling_kwargs(settings: SamplingSetting | None) -> dict:
    if settings is None:
        return {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    return {
        "do_sample": True,
        "temperature": settings.temperature,
        "top_p": settings.top_p,
        "top_k": settings.top_k if settings.top_k > 0 else None,
    }


@torch.no_grad()
def generate(
    loaded: LoadedModel,
    images: list[Image.Image],
    prompts: list[str],
    settings: SamplingSetting | None = None,
    max_new_tokens: int = 160,
    batch_size: int = 8,
) -> list[str]:
    """One answer per (image, prompt): greedy when ``settings`` is None, else sampled with its seed.

    Batches are left-padded so every sequence's answer starts at the same position. A sampled
    run is reproducible: the generator is re-seeded from ``settings.seed`` once per call.
    """
    if len(images) != len(prompts):
        raise ValueError(f"generate got {len(images)} images but {len(prompts)} prompts")
    model, processor = loaded.model, loaded.processor
    was_training = model.training
    model.eval()
    processor.tokenizer.padding_side = "left"
    if settings is not None:
        torch.manual_seed(settings.seed)
    answers: list[str] = []
    texts = prompt_texts(loaded, prompts)
    for start in range(0, len(texts), batch_size):
        batch = processor(
            text=texts[start : start + batch_size], images=images[start : start + batch_size],
            padding=True, return_tensors="pt",
        ).to(model.device)
        out = model.generate(**batch, max_new_tokens=max_new_tokens, **_sampling_kwargs(settings))
        new_tokens = out[:, batch["input_ids"].shape[1]:]
        answers += [t.strip() for t in processor.batch_decode(new_tokens, skip_special_tokens=True)]
    model.train(was_training)
    return answers
