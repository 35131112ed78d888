"""Sizes of a model's architecture without weights: parameters per component, widths, image tokens.

The model is built on the ``meta`` device from ``cfg.model.architecture``, so this costs no
memory and no download; it serves the dry-run plan and the benchmark's FLOP estimates.
"""

from __future__ import annotations

import copy
from collections import Counter
from dataclasses import dataclass

import torch

from cme_vlm.models.adapters import adapter_for
from cme_vlm.schema import ExperimentConfig


@dataclass(frozen=True)
class ArchitectureSummary:
    params: dict[str, int]  # per component: vision_encoder, merger, language_model
    hidden: int
    layers: int
    vocab: int
    image_tokens: int | None  # visual tokens one image of max_pixels becomes; None: set by the processor's tiling


def architecture_summary(cfg: ExperimentConfig) -> ArchitectureSummary:
    """Count the parameters of ``cfg.model.architecture`` per component, on the meta device."""
    adapter = adapter_for(cfg.model.family)
    config = adapter.config_class(**copy.deepcopy(cfg.model.architecture))  # transformers edits nested dicts
    with torch.device("meta"):
        model = adapter.model_class(config)
    params: Counter[str] = Counter()
    for name, p in model.named_parameters():
        params[adapter.component_of(name)] += p.numel()
    text = config.get_text_config()
    image_tokens = None
    if adapter.declaration.pixel_resolution:
        side = config.vision_config.patch_size * config.vision_config.spatial_merge_size
        image_tokens = max(1, cfg.model.max_pixels // (side * side))
    return ArchitectureSummary(
        params=dict(params), hidden=text.hidden_size, layers=text.num_hidden_layers, vocab=text.vocab_size,
        image_tokens=image_tokens,
    )
