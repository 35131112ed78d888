"""The cache a batch of draws decodes from: row ``j`` holds the prefilled prefix of record ``rows[j]``.

A decoder layer keeps either attention keys and values (full or sliding-window) or, in a
linear-attention layer (Qwen3.5's Gated DeltaNet), a convolution and a recurrent state. Both
kinds are selected by row here, so the same prefix serves every family.
"""

from __future__ import annotations

import copy

from torch import Tensor
from transformers import DynamicCache, StaticCache
from transformers.cache_utils import DynamicSlidingWindowLayer, LinearAttentionCacheLayerMixin

from cme_vlm.errors import ModelError


def dynamic_rows(prefix: DynamicCache, rows: Tensor) -> DynamicCache:
    """A copy of ``prefix`` whose row ``j`` is its row ``rows[j]`` (rows may repeat), every layer kind alike."""
    cache = copy.deepcopy(prefix)
    cache.reorder_cache(rows)
    return cache


def static_rows(prefix: DynamicCache, rows: Tensor, cache: StaticCache) -> StaticCache:
    """``cache``, an empty fixed-shape cache (for the compiled decode step), filled with ``prefix``'s rows ``rows``."""
    for index, (source, target) in enumerate(zip(prefix.layers, cache.layers, strict=True)):
        if isinstance(source, LinearAttentionCacheLayerMixin):
            for state in range(source.number_of_states):
                target.update_conv_state(source.conv_states[state][rows], state)
                target.update_recurrent_state(source.recurrent_states[state][rows], state)
            continue
        if isinstance(source, DynamicSlidingWindowLayer) and source.cumulative_length > source.keys.shape[-2]:
            raise ModelError(
                f"generation.cache=static: a prompt of {source.cumulative_length + 1} tokens is longer than the "
                f"model's sliding attention window ({source.sliding_window}), whose evicted keys a fixed-shape cache "
                "cannot be rebuilt from. Set generation.cache=dynamic."
            )
        cache.update(source.keys[rows], source.values[rows], index)
    return cache
