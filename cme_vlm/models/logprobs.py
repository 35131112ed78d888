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

from cme_vlm.models.adapters import IGNORE_INDEX, SEQUENCE_LENGTHS, ModelAdapter, adapter_of
from cme_vlm.models.head_logprobs import HEAD_CHUNK, token_logprobs
from cme_vlm.models.packing import is_packed, positions_by_sequence

# mm_encoder_outputs: image features computed once and shared by several sequences (DPO pairs);
# position_ids: given by packed batches only
EXTRA_INPUTS = ("position_ids", "mm_encoder_outputs")


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
    adapter = adapter_of(inner.config)
    keys = (*adapter.token_fields, *EXTRA_INPUTS, *adapter.image_fields(batch))
    inputs = {k: batch[k] for k in keys if k in batch}
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


def _twice(value: Any, per_image: bool) -> Any:
    """Image features for the ``2B`` sequences: a tensor concatenated with itself along its first dimension, a
    sequence of per-image features repeated (``per_image``), any other sequence (per layer) doubled element-wise."""
    if isinstance(value, Tensor):
        return torch.cat([value, value])
    if isinstance(value, (list, tuple)):
        return type(value)(list(value) * 2) if per_image else type(value)(_twice(v, True) for v in value)
    return value


def _shared_features(model: nn.Module, adapter: ModelAdapter, batch: dict[str, Tensor]) -> dict[str, Any]:
    """Encode the ``B`` images once and double their features for the ``2B`` sequences.

    ``pooler_output`` (what the decoder takes in place of the image tokens) is per image; the
    other sequences a family returns (Qwen3-VL's ``deepstack_features``) are per layer.
    """
    images = {k: batch[k] for k in adapter.image_fields(batch)}
    features = model.get_image_features(**images, return_dict=True)
    doubled = {k: _twice(v, per_image=k == "pooler_output") for k, v in features.items()}
    return {"image": type(features)(**doubled)}


def pair_logprobs(model: nn.Module, batch: dict[str, Tensor], share_image: bool = True) -> PairLogps:
    """Answer log-probs of the accepted and rejected halves in one forward pass over ``2B`` sequences.

    The batch comes from ``cme_vlm.models.encoding.collate_pairs`` (accepted answers first, then
    rejected, ``B`` images), padded or packed. The head runs on answer positions only, chunked
    (``token_logprobs``). With ``share_image`` the ``B`` images are encoded once and their features fed to both
    sequences of a pair (the vision tower's gradient collects both); ``share_image=False``
    encodes each sequence's image separately (the behaviour the shared path must reproduce).
    The image fields other than the pixels (Qwen-VL's grids for the rotary positions) are doubled.
    """
    inner = hf_model(model)
    adapter = adapter_of(inner.config)
    images = adapter.image_fields(batch)
    inputs = {k: v for k, v in batch.items() if k not in images}
    inputs.update({k: _twice(batch[k], per_image=True) for k in images if not share_image or k != "pixel_values"})
    if share_image:
        inputs["mm_encoder_outputs"] = _shared_features(inner.model, adapter, batch)
    answer = answer_logprobs(model, inputs)
    positions = answer.positions
    logp = sequence_logprobs(answer.token_logp, positions)
    tokens = positions.sum(-1)
    half = len(logp) // 2
    return PairLogps(logp[:half], logp[half:], tokens[:half], tokens[half:])
