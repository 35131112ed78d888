"""Turn (image, prompt, answer) triples into model inputs with answer-only labels.

The prompt goes through the family's chat template and the processor (which expands the
image placeholder into one token per merged patch); the answer and its end token are
tokenised separately and appended, so the boundary is exact. Labels are -100 everywhere
except the answer and its end token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from cme_vlm.errors import DataError
from cme_vlm.models.adapters import IGNORE_INDEX
from cme_vlm.models.generation import prompt_texts
from cme_vlm.models.loading import LoadedModel


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

    def __call__(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.encoder.encode(
            [r["overlay"] for r in records], [r["prompt"] for r in records], [r["answer"] for r in records]
        )
        batch["ids"] = [r["id"] for r in records]
        return batch
