"""Token log-probs and the SFT loss, written by hand as small pure functions.

Notation: ``B`` sequences of length ``T``, hidden size ``H``, vocabulary ``V``; ``N`` is the
number of labelled (answer) positions in the batch. Labels follow the Hugging Face
convention: ``labels[b, t]`` is the token at position ``t`` (not shifted), ``-100`` where
nothing is learned; position ``t`` predicts ``labels[b, t + 1]``.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100


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


def _chunk_logprobs(hidden: Tensor, weight: Tensor, targets: Tensor) -> Tensor:
    logits = (hidden @ weight.T).float()
    return logits.gather(-1, targets[:, None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def token_logprobs(hidden: Tensor, weight: Tensor, targets: Tensor, chunk_size: int = 1024) -> Tensor:
    """``log p(y_n | x_<n) = z_n[y_n] - logsumexp(z_n)`` with ``z_n = W h_n`` in float32.

    ``hidden: [N, H]`` (answer positions only), ``weight: [V, H]`` (the output head),
    ``targets: [N]`` -> ``[N]`` float32. The logits are built ``chunk_size`` rows at a time and
    recomputed in the backward pass, so at most ``[chunk_size, V]`` float32 logits exist at once
    instead of the full ``[B, T, V]``.
    """
    parts = []
    for start in range(0, hidden.shape[0], chunk_size):
        h, y = hidden[start : start + chunk_size], targets[start : start + chunk_size]
        if torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad):
            parts.append(checkpoint(_chunk_logprobs, h, weight, y, use_reentrant=False))
        else:
            parts.append(_chunk_logprobs(h, weight, y))
    return torch.cat(parts) if parts else hidden.new_zeros(0, dtype=torch.float32)


def sequence_logprobs(token_logp: Tensor, positions: Tensor) -> Tensor:
    """Summed answer log-prob per sequence: ``log π(y_b | x_b) = Σ_t log p(y_{b,t} | ·)``.

    ``token_logp: [N]`` in the row-major order of ``positions: [B, T]`` -> ``[B]``.
    """
    rows = positions.nonzero()[:, 0]
    return torch.zeros(positions.shape[0], dtype=token_logp.dtype, device=token_logp.device).index_add(
        0, rows, token_logp
    )


def sft_loss(token_logp: Tensor, n_tokens: int | Tensor) -> Tensor:
    """Token-level cross-entropy ``L = -(1/N) Σ_n log p(y_n | x_<n)``.

    ``token_logp: [N_micro]`` (one micro-batch); ``n_tokens``: the answer-token count ``N`` of
    the whole accumulated batch (over all micro-batches and devices), so every token weighs the
    same however the batch is split, rather than every sequence.
    """
    return -token_logp.sum() / n_tokens
