"""Padding-free batches: the sequences of a padded batch laid end to end in one row.

A packed batch of ``B`` sequences holds ``input_ids``, ``labels`` and the family's token types
(``mm_token_type_ids``, ``token_type_ids``) of shape ``[1, L]`` (``L`` the sum of the sequence
lengths, no padding), the images as before, no ``attention_mask``, and ``position_ids``:

- the text position, restarting at 0 in every sequence: ``[1, L]`` for a 1-D decoder. transformers
  reads the sequence boundaries from it: ``flash_attention_2`` runs variable-length attention
  (``modeling_flash_attention_utils._is_packed_sequence``), sdpa and eager get a block-diagonal
  causal mask (``masking_utils.find_packed_sequence_indices``; Gemma 3's bidirectional image
  blocks are joined to it by ``or``, then cut to the sequence by ``and``);
- for a Qwen-VL decoder (mRoPE) ``[4, 1, L]``: the text position as row 0, then the multimodal
  rotary positions (temporal, height, width) that the model's ``get_rope_index`` gives each
  sequence with its own image grid, as in the padded batch.

``sequence_lengths: [B]`` marks a batch as packed and keeps the boundaries for per-sequence sums.

Only flash-attention's varlen kernels skip the work across sequences; the sdpa and eager masks
span the whole row, so their attention grows with ``L²`` instead of ``Σ_b T_b²`` (on the demo's
tiny model on CPU a packed sdpa step took about twice as long as a padded one).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from cme_vlm.models.adapters import IGNORE_INDEX, SEQUENCE_LENGTHS

# a model's ``get_rope_index(input_ids, mm_token_type_ids, image_grid_thw, attention_mask=)`` -> ([3, B, T], deltas)
RopeIndex = Callable[..., tuple[Tensor, Tensor]]


def pack(batch: dict[str, Any], token_types: tuple[str, ...], rope_index: RopeIndex | None = None) -> dict[str, Any]:
    """A padded batch (``[B, T]`` token fields and ``attention_mask``) as one padding-free row.

    ``token_types``: the family's per-token fields besides ids and labels; ``rope_index``: the
    model's ``get_rope_index`` for an mRoPE decoder, None for 1-D positions. Tokens keep their
    order (sequence 0 first), so the ``N`` labelled positions come in the same order as in the
    padded batch. Each sequence's first token loses its label: nothing predicts it in the padded
    batch, and in the row the previous sequence's last token would. Other fields (images, ids)
    pass through unchanged.
    """
    mask = batch["attention_mask"].bool()
    text = mask.long().cumsum(-1) - 1
    tokens = ("input_ids", "labels", *token_types)
    fields = {**batch, "labels": batch["labels"].masked_fill(text == 0, IGNORE_INDEX)}
    packed = {k: v for k, v in batch.items() if k not in (*tokens, "attention_mask")}
    packed.update({key: fields[key][mask][None] for key in tokens})
    packed["position_ids"] = text[mask][None]  # [1, L]
    if rope_index is not None:
        rope, _ = rope_index(
            batch["input_ids"], batch["mm_token_type_ids"], batch["image_grid_thw"], attention_mask=batch["attention_mask"]
        )  # [3, B, T]
        packed["position_ids"] = torch.cat([packed["position_ids"], rope[:, mask]])[:, None]  # [4, 1, L]
    packed[SEQUENCE_LENGTHS] = mask.sum(-1)
    return packed


def is_packed(batch: dict[str, Any]) -> bool:
    return SEQUENCE_LENGTHS in batch


def positions_by_sequence(positions: Tensor, lengths: Tensor) -> Tensor:
    """Spread the flags of one packed row over its sequences.

    ``positions: [1, L]`` bool, ``lengths: [B]`` -> ``[B, L]`` bool whose row ``b`` keeps the
    flags inside sequence ``b`` only. Sequences are contiguous and in order, so the row-major
    order of the true entries is the order along the packed row.
    """
    owner = torch.repeat_interleave(torch.arange(len(lengths), device=lengths.device), lengths)  # [L]
    return (owner[None] == torch.arange(len(lengths), device=lengths.device)[:, None]) & positions
