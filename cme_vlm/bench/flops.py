"""Model FLOPs of a training step: ``6·N_trained·positions + 2·N_frozen·positions`` per part.

A trained weight costs 2 FLOPs per position in the forward pass and 4 in the backward
(gradients of activations and of the weight); a frozen part that nothing before it trains
costs only its forward, 2 per position. Each part counts the positions it really runs on:

==================  ==========================================================
part                positions
==================  ==========================================================
``vision_encoder``  image patches of the encoded images (before the merger)
``merger``          image tokens of the encoded images
``language_model``  every non-padding token (embedding lookup and head apart)
``lm_head``         answer positions only (the chunked loss skips the others)
``embedding``       none: a table lookup, no multiply-add
==================  ==========================================================

Left out (a few per cent at the bench shapes): the attention score/value products, which
grow with sequence length (``4·layers·T·hidden`` per token forward, ~1.5% at T=584 on the
7B), the recomputed head of the chunked loss, norms and activations.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from cme_vlm.bench.inputs import SequenceShape
from cme_vlm.models.adapters import ModelAdapter
from cme_vlm.models.logprobs import hf_model

PARTS = ("vision_encoder", "merger", "language_model", "lm_head", "embedding")


@dataclass(frozen=True)
class PartParams:
    trainable: int
    frozen: int


def part_parameters(model: nn.Module, adapter: ModelAdapter) -> dict[str, PartParams]:
    """Trainable and frozen parameter counts per part; a tied embedding counts once, as the head."""
    inner = hf_model(model)
    head = inner.get_output_embeddings().weight
    embedding = inner.get_input_embeddings().weight
    counts = {p: [0, 0] for p in PARTS}
    for name, param in model.named_parameters():
        if param is head:
            part = "lm_head"
        elif param is embedding:
            part = "embedding"
        else:
            part = adapter.component_of(name)
        counts[part][0 if param.requires_grad else 1] += param.numel()
    return {p: PartParams(*c) for p, c in counts.items()}


def part_positions(shape: SequenceShape) -> dict[str, int]:
    """How many positions each part runs on in one step of ``shape`` (each sequence holds one image)."""
    return {
        "vision_encoder": shape.patches,
        "merger": shape.image_tokens * shape.images_encoded // shape.sequences,
        "language_model": shape.tokens,
        "lm_head": shape.answer_tokens,
        "embedding": 0,
    }


def training_flops(params: dict[str, PartParams], positions: dict[str, int]) -> int:
    """``Σ_part (6·trainable + 2·frozen) · positions``: model FLOPs of one forward+backward step."""
    return sum((6 * params[p].trainable + 2 * params[p].frozen) * positions[p] for p in PARTS)
