"""The SFT loss, written by hand as a small pure function over answer-token log-probs.

The log-probs come from ``cme_vlm.models.logprobs.answer_logprobs`` (the head applied to answer
positions only, in float32).
"""

from __future__ import annotations

from torch import Tensor


def sft_loss(token_logp: Tensor, n_tokens: int | Tensor) -> Tensor:
    """Token-level cross-entropy ``L = -(1/N) Σ_n log p(y_n | x_<n)``.

    ``token_logp: [N_micro]`` (one micro-batch); ``n_tokens``: the answer-token count ``N`` of
    the whole accumulated batch (over all micro-batches and devices), so every token weighs the
    same however the batch is split, rather than every sequence.
    """
    return -token_logp.sum() / n_tokens
