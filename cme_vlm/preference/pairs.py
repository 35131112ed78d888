"""Preference pairs as model inputs: collation of (image, prompt, accepted, rejected) and the shared-image forward.

A batch of ``B`` pairs becomes ``2B`` sequences, the accepted answers first, then the rejected
ones, right-padded to one length, with labels only on the answer tokens (answer + end token). ``pair_logprobs`` encodes them once and feeds the same
vision features to both sequences of a pair (``mm_encoder_outputs``), so the vision tower runs
on ``B`` images, not ``2B``, and its gradient collects both sequences' contributions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from cme_vlm.data.collate import ChatEncoder
from cme_vlm.training.logprobs import answer_logprobs, hf_model
from cme_vlm.training.losses import sequence_logprobs


@dataclass
class PairLogps:
    """Summed answer log-probs ``[B]`` and answer token counts ``[B]`` of both halves of a pair batch."""

    accepted: Tensor
    rejected: Tensor
    accepted_tokens: Tensor
    rejected_tokens: Tensor


def collate_pairs(encoder: ChatEncoder, examples: list[dict[str, Any]]) -> dict[str, Tensor]:
    """Examples with ``overlay, prompt, accepted, rejected`` (and optional ``ref_logp_*``) → one pair batch.

    The SFT stage's ``ChatEncoder`` encodes the ``2B`` sequences (answer-only labels, right
    padding, tail truncation); only the first ``B`` images' patches are kept.
    """
    images = [e["overlay"].convert("RGB") for e in examples]
    prompts = [e["prompt"] for e in examples]
    answers = [e["accepted"] for e in examples] + [e["rejected"] for e in examples]
    batch = encoder.encode(images * 2, prompts * 2, answers)
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

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = collate_pairs(self.encoder, examples)
        batch["ids"] = [e["id"] for e in examples]
        return batch


def _shared_features(model: nn.Module, batch: dict[str, Tensor]) -> dict[str, Any]:
    """Encode the ``B`` images once and repeat their features for the ``2B`` sequences."""
    features = model.get_image_features(batch["pixel_values"], batch["image_grid_thw"], return_dict=True)
    shared = dict(features.items())
    shared["pooler_output"] = tuple(features.pooler_output) * 2
    if shared.get("deepstack_features") is not None:  # Qwen3-VL feeds per-layer features as well
        shared["deepstack_features"] = [tuple(f) * 2 for f in features.deepstack_features]
    return {"image": type(features)(**shared)}


def pair_logprobs(model: nn.Module, batch: dict[str, Tensor], share_image: bool = True) -> PairLogps:
    """Answer log-probs of the accepted and rejected halves in one forward pass over ``2B`` sequences.

    The head runs on answer positions only, chunked (``cme_vlm.training.losses.token_logprobs``).
    ``share_image=False`` encodes each sequence's image separately (the behaviour the shared
    path must reproduce).
    """
    inner = hf_model(model)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "mm_token_type_ids", "labels")}
    inputs["image_grid_thw"] = batch["image_grid_thw"].repeat(2, 1)
    if share_image:
        inputs["mm_encoder_outputs"] = _shared_features(inner, batch)
    else:
        inputs["pixel_values"] = batch["pixel_values"].repeat(2, 1)
    answer = answer_logprobs(model, inputs)
    positions = answer.positions
    logp = sequence_logprobs(answer.token_logp, positions)
    tokens = positions.sum(-1)
    half = batch["image_grid_thw"].shape[0]
    return PairLogps(logp[:half], logp[half:], tokens[:half], tokens[half:])
