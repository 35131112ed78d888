"""Turn (image, prompt, answer) triples and preference pairs into model inputs with answer-only labels.

The prompt goes through the family's chat template and the processor (which expands the
image placeholder into the image's tokens); the answer's text is what the same template puts
after the prompt, up to and including the family's end-of-turn token (``answer_text``), tokenised
separately and appended, so the boundary is exact. Labels are -100 everywhere except the answer
and its end token. The family's per-token inputs (Qwen-VL's ``mm_token_type_ids``, Gemma 3's
``token_type_ids``) follow the tokens; every other field of the processor's output is the images'.

A batch of ``B`` preference pairs becomes ``2B`` sequences, the accepted answers first, then
the rejected ones, with the ``B`` images once: every image field keeps its first half, since the
``2B`` sequences' images are the ``B`` images twice (``cme_vlm.models.logprobs.pair_logprobs``
feeds each image's features to both of its sequences).

With ``padding_free`` the collators hand out packed batches instead: the same sequences laid end
to end in one row, without padding (``cme_vlm.models.packing``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from cme_vlm.errors import DataError, ModelError
from cme_vlm.models.adapters import IGNORE_INDEX
from cme_vlm.models.generation import encode_prompts, prompt_texts
from cme_vlm.models.loading import LoadedModel
from cme_vlm.models.logprobs import hf_model
from cme_vlm.models.packing import pack


def answer_text(loaded: LoadedModel, prompt: str, answer: str) -> str:
    """The text the chat template puts after ``prompt``'s generation prompt for ``answer``, through the end-of-turn token.

    E.g. ``"The IMV.<|im_end|>"`` for ChatML, ``" The IMV.<end_of_utterance>"`` for SmolVLM's
    ``Assistant:`` turns: what the model is trained to write after the prompt it is given. A template
    that does not write the end token itself (LLaVA-1.5's stops at the answer) has it appended:
    the model must learn to stop.
    """
    head = prompt_texts(loaded, [prompt])[0]
    full = loaded.processor.apply_chat_template(loaded.adapter.messages(prompt, answer), tokenize=False)
    tail = full[len(head):] if full.startswith(head) else ""
    if answer not in tail:
        raise ModelError(
            f"the chat template of this {loaded.adapter.family.value} model does not continue the prompt with the "
            f"answer (it rendered {full[-120:]!r}). Use the model folder's own chat_template."
        )
    end, after = loaded.adapter.end_token, tail.index(answer) + len(answer)
    return tail[: tail.index(end, after) + len(end)] if end in tail[after:] else tail[:after] + end


@dataclass
class ChatEncoder:
    """Encodes batches for one model; shared by SFT and (with each image twice) DPO."""

    loaded: LoadedModel
    max_length: int = 1024

    def encode(self, images: list[Image.Image], prompts: list[str], answers: list[str]) -> dict[str, Any]:
        """Right-padded ``input_ids``/``attention_mask``/``labels`` ``[B, T]``, plus the image tensors.

        Images may differ in size: ``pixel_values`` holds all their patches and ``image_grid_thw``
        ``[B, 3]`` their grids. A sequence longer than ``max_length`` loses the tail of its answer.
        """
        enc = encode_prompts(self.loaded, images, prompts)
        keep = enc["attention_mask"].bool()
        rows = [self._row(enc, keep[i], i, p, a) for i, (p, a) in enumerate(zip(prompts, answers, strict=True))]
        batch = _pad(rows, self.loaded.tokenizer.pad_token_id)
        for key in self.loaded.adapter.image_fields(enc):
            batch[key] = enc[key]
        return batch

    def _row(self, enc: Any, keep: torch.Tensor, i: int, prompt: str, answer: str) -> dict[str, torch.Tensor]:
        tokenizer = self.loaded.tokenizer
        ids = enc["input_ids"][i][keep]
        if len(ids) >= self.max_length:
            raise DataError(
                f"a prompt with its image takes {len(ids)} tokens, more than sft.max_length={self.max_length}. "
                "Raise sft.max_length or lower model.max_pixels."
            )
        target = tokenizer(answer_text(self.loaded, prompt, answer), add_special_tokens=False, return_tensors="pt")
        target = target["input_ids"][0][: self.max_length - len(ids)]
        row = {"input_ids": torch.cat([ids, target]), "labels": torch.cat([torch.full_like(ids, IGNORE_INDEX), target])}
        for key in self.loaded.adapter.token_fields[2:]:  # token types: the answer is text
            row[key] = torch.cat([enc[key][i][keep], torch.zeros_like(target)])
        return row

    def pack(self, batch: dict[str, Any]) -> dict[str, Any]:
        """A batch from ``encode`` as one padding-free row; multimodal rotary positions from the model itself."""
        adapter = self.loaded.adapter
        rope_index = hf_model(self.loaded.model).model.get_rope_index if adapter.mrope else None
        return pack(batch, adapter.token_fields[2:], rope_index)


def _pad(rows: list[dict[str, torch.Tensor]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad every field to the longest row; padding is ignored by mask and labels (token types: 0, text)."""
    length = max(len(r["input_ids"]) for r in rows)
    fill = {"input_ids": pad_id, "labels": IGNORE_INDEX}
    batch: dict[str, torch.Tensor] = {}
    for key in rows[0]:
        batch[key] = torch.stack([
            torch.nn.functional.pad(r[key], (0, length - len(r[key])), value=fill.get(key, 0)) for r in rows
        ])
    batch["attention_mask"] = torch.stack([
        torch.nn.functional.pad(torch.ones_like(r["input_ids"]), (0, length - len(r["input_ids"]))) for r in rows
    ])
    return batch


@dataclass
class SFTCollator:
    """Collates records (``id``, ``overlay``, ``prompt``, ``answer``) into one batch with their ids."""

    encoder: ChatEncoder
    padding_free: bool = False

    def __call__(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.encoder.encode(
            [r["overlay"] for r in records], [r["prompt"] for r in records], [r["answer"] for r in records]
        )
        if self.padding_free:
            batch = self.encoder.pack(batch)
        batch["ids"] = [r["id"] for r in records]
        return batch


def collate_pairs(
    encoder: ChatEncoder, examples: list[dict[str, Any]], padding_free: bool = False
) -> dict[str, torch.Tensor]:
    """Examples with ``overlay, prompt, accepted, rejected`` (and optional ``ref_logp_*``) → one pair batch.

    The SFT encoder encodes the ``2B`` sequences (answer-only labels, right padding, tail
    truncation; packed into one row with ``padding_free``); only the first ``B`` images are kept:
    the first half of every image field (rows of concatenated patches or tiles, or one entry per image).
    """
    images = [e["overlay"].convert("RGB") for e in examples]
    prompts = [e["prompt"] for e in examples]
    answers = [e["accepted"] for e in examples] + [e["rejected"] for e in examples]
    batch = encoder.encode(images * 2, prompts * 2, answers)
    if padding_free:  # before the images are cut to B: each sequence's positions need its own
        batch = encoder.pack(batch)
    for key in encoder.loaded.adapter.image_fields(batch):
        batch[key] = batch[key][: len(batch[key]) // 2]
    for key in ("ref_logp_accepted", "ref_logp_rejected"):
        batch[key] = torch.tensor([e.get(key, math.nan) for e in examples], dtype=torch.float64)
    return batch


@dataclass
class PairCollator:
    """``collate_pairs`` as a DataLoader ``collate_fn``; keeps the pairs' ids beside the tensors."""

    encoder: ChatEncoder
    padding_free: bool = False

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = collate_pairs(self.encoder, examples, self.padding_free)
        batch["ids"] = [e["id"] for e in examples]
        return batch
