"""Turn (image, prompt, answer) triples and preference pairs into model inputs with answer-only labels.

The prompt goes through the family's chat template and the processor (which expands the
image placeholder into one token per merged patch); the answer and its end token are
tokenised separately and appended, so the boundary is exact. Labels are -100 everywhere
except the answer and its end token.

A batch of ``B`` preference pairs becomes ``2B`` sequences, the accepted answers first, then
the rejected ones, with the ``B`` images once (``cme_vlm.models.logprobs.pair_logprobs`` feeds
each image's features to both of its sequences).

With ``padding_free`` the collators hand out packed batches instead: the same sequences laid end
to end in one row, without padding (``cme_vlm.models.packing``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from cme_vlm.errors import DataError
from cme_vlm.models.adapters import IGNORE_INDEX
from cme_vlm.models.generation import prompt_texts
from cme_vlm.models.loading import LoadedModel
from cme_vlm.models.logprobs import hf_model
from cme_vlm.models.packing import pack


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
        processor = self.loaded.processor
        processor.tokenizer.padding_side = "left"
        enc = processor(text=prompt_texts(self.loaded, prompts), images=images, padding=True, return_tensors="pt")
        keep = enc["attention_mask"].bool()
        rows = [self._row(enc, keep[i], i, a) for i, a in enumerate(answers)]
        batch = _pad(rows, processor.tokenizer.pad_token_id)
        batch["pixel_values"] = enc["pixel_values"]
        batch["image_grid_thw"] = enc["image_grid_thw"]
        return batch

    def _row(self, enc: Any, keep: torch.Tensor, i: int, answer: str) -> dict[str, torch.Tensor]:
        tokenizer = self.loaded.tokenizer
        prompt = enc["input_ids"][i][keep]
        if len(prompt) >= self.max_length:
            raise DataError(
                f"a prompt with its image takes {len(prompt)} tokens, more than sft.max_length={self.max_length}. "
                "Raise sft.max_length or lower model.max_pixels."
            )
        target = tokenizer(answer + self.loaded.adapter.end_token, add_special_tokens=False, return_tensors="pt")
        target = target["input_ids"][0][: self.max_length - len(prompt)]
        row = {
            "input_ids": torch.cat([prompt, target]),
            "labels": torch.cat([torch.full_like(prompt, IGNORE_INDEX), target]),
        }
        if "mm_token_type_ids" in enc:
            row["mm_token_type_ids"] = torch.cat([enc["mm_token_type_ids"][i][keep], torch.zeros_like(target)])
        return row

    def pack(self, batch: dict[str, Any]) -> dict[str, Any]:
        """A batch from ``encode`` as one padding-free row, rotary positions from the model itself."""
        return pack(batch, hf_model(self.loaded.model).model.get_rope_index)


def _pad(rows: list[dict[str, torch.Tensor]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad every field to the longest row; padding is ignored by mask and labels."""
    length = max(len(r["input_ids"]) for r in rows)
    fill = {"input_ids": pad_id, "labels": IGNORE_INDEX, "mm_token_type_ids": 0}
    batch: dict[str, torch.Tensor] = {}
    for key in rows[0]:
        batch[key] = torch.stack([
            torch.nn.functional.pad(r[key], (0, length - len(r[key])), value=fill[key]) for r in rows
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
    truncation; packed into one row with ``padding_free``); only the first ``B`` images'
    patches are kept.
    """
    images = [e["overlay"].convert("RGB") for e in examples]
    prompts = [e["prompt"] for e in examples]
    answers = [e["accepted"] for e in examples] + [e["rejected"] for e in examples]
    batch = encoder.encode(images * 2, prompts * 2, answers)
    if padding_free:  # before the grids are cut to B: each sequence's positions need its own
        batch = encoder.pack(batch)
    half = len(examples)
    batch["pixel_values"] = batch["pixel_values"][: int(batch["image_grid_thw"][:half].prod(-1).sum())]
    batch["image_grid_thw"] = batch["image_grid_thw"][:half]
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
