"""Run a model on a batch and gather the log-probs of its labelled (answer) tokens only.

Notation: ``B`` sequences of length ``T``, hidden size ``H``, vocabulary ``V``; ``N`` is the
number of labelled (answer) positions in the batch. Labels follow the Hugging Face
convention: ``labels[b, t]`` is the token at position ``t`` (not shifted), ``-100`` where
nothing is learned; position ``t`` predicts ``labels[b, t + 1]``. A packed batch
(``cme_vlm.models.packing``) is one row of ``T = L`` tokens whose sequences each start with an
unlabelled token, so no position predicts across a sequence boundary.

Shared by SFT and DPO training, the preference stage's reference log-probs and the bench.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from cme_vlm.models.adapters import IGNORE_INDEX
from cme_vlm.models.head_logprobs import HEAD_CHUNK, token_logprobs
from cme_vlm.models.packing import SEQUENCE_LENGTHS, is_packed, positions_by_sequence

# mm_encoder_outputs: image features computed once and shared by several sequences (DPO pairs);
# position_ids: given by packed batches only
MODEL_INPUTS = (
    "input_ids", "attention_mask", "position_ids", "pixel_values", "image_grid_thw", "mm_token_type_ids",
    "mm_encoder_outputs",
)


def next_token_targets(labels: Tensor) -> tuple[Tensor, Tensor]:
    """Where a prediction is learned, and what it should be.

    ``labels: [B, T]`` -> ``(positions: [B, T] bool, targets: [N] long)`` with
    ``positions[b, t]`` true iff ``labels[b, t + 1] != -100`` and ``targets`` those labels in
    row-major order.
    """
    shifted = torch.full_like(labels, IGNORE_INDEX)
    shifted[:, :-1] = labels[:, 1:]
    positions = shifted != IGNORE_INDEX
    return positions, shifted[positions]


def sequence_logprobs(token_logp: Tensor, positions: Tensor) -> Tensor:
    """Summed answer log-prob per sequence: ``log π(y_b | x_b) = Σ_t log p(y_{b,t} | ·)``.

    ``token_logp: [N]`` in the row-major order of ``positions: [B, T]`` -> ``[B]``.
    """
    rows = positions.nonzero()[:, 0]
    return torch.zeros(positions.shape[0], dtype=token_logp.dtype, device=token_logp.device).index_add(
        0, rows, token_logp
    )


@dataclass
class AnswerLogprobs:
    token_logp: Tensor  # [N] float32 (float64 for a float64 model), labelled positions in row-major order
    positions: Tensor  # [B, T] bool, where the N predictions are made; packed: [B, L], row b for sequence b


def hf_model(model: nn.Module) -> nn.Module:
    """The Hugging Face model inside a peft wrapper (LoRA layers stay injected)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def answer_logprobs(model: nn.Module, batch: dict[str, Any], chunk_size: int = HEAD_CHUNK) -> AnswerLogprobs:
    """Hidden states from the model's base, the head applied to answer positions only.

    The ``[B, T, V]`` logits are never built: only ``[N, H]`` hidden states go through the head.
    A padded and a packed batch of the same sequences give the same ``token_logp``.
    """
    inner = hf_model(model)
    inputs = {k: batch[k] for k in MODEL_INPUTS if k in batch}
    hidden = inner.model(**inputs, use_cache=False).last_hidden_state  # [B, T, H]; packed: [1, L, H]
    positions, targets = next_token_targets(batch["labels"])
    head = inner.lm_head.weight
    logp = token_logprobs(hidden[positions].to(head.dtype), head, targets, chunk_size)
    if is_packed(batch):
        positions = positions_by_sequence(positions, batch[SEQUENCE_LENGTHS])
    return AnswerLogprobs(logp, positions)


def count_targets(labels: Tensor) -> Tensor:
    """How many tokens of ``labels: [B, T]`` (or a packed ``[1, L]``) are learned, each predicted by the one before."""
    return (labels[:, 1:] != IGNORE_INDEX).sum()


@dataclass
class PairLogps:
    """Summed answer log-probs ``[B]`` and answer token counts ``[B]`` of both halves of a pair batch."""

    accepted: Tensor
    rejected: Tensor
    accepted_tokens: Tensor
    rejected_tokens: Tensor


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

    The batch comes from ``cme_vlm.models.encoding.collate_pairs`` (accepted answers first, then
    rejected, ``B`` images), padded or packed. The head runs on answer positions only, chunked
    (``token_logprobs``). With ``share_image`` the ``B`` images are encoded once and their features fed to both
    sequences of a pair (the vision tower's gradient collects both); ``share_image=False``
    encodes each sequence's image separately (the behaviour the shared path must reproduce).
    """
    inner = hf_model(model)
    sequences = ("input_ids", "attention_mask", "position_ids", "mm_token_type_ids", "labels", SEQUENCE_LENGTHS)
    inputs = {k: batch[k] for k in sequences if k in batch}
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
