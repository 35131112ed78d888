"""Run a model on a batch and gather the log-probs of its labelled tokens only."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from cme_vlm.training.losses import next_token_targets, token_logprobs

# mm_encoder_outputs: image features computed once and shared by several sequences (DPO pairs)
MODEL_INPUTS = ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids", "mm_encoder_outputs")


@dataclass
class AnswerLogprobs:
    token_logp: Tensor  # [N] float32, labelled positions in row-major order
    positions: Tensor  # [B, T] bool, where the N predictions are made


def hf_model(model: nn.Module) -> nn.Module:
    """The Hugging Face model inside a peft wrapper (LoRA layers stay injected)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def answer_logprobs(model: nn.Module, batch: dict[str, Any], chunk_size: int = 1024) -> AnswerLogprobs:
    """Hidden states from the model's base, the head applied to answer positions only.

    The ``[B, T, V]`` logits are never built: only ``[N, H]`` hidden states go through the head.
    """
    inner = hf_model(model)
    inputs = {k: batch[k] for k in MODEL_INPUTS if k in batch}
    hidden = inner.model(**inputs, use_cache=False).last_hidden_state  # [B, T, H]
    positions, targets = next_token_targets(batch["labels"])
    head = inner.lm_head.weight
    logp = token_logprobs(hidden[positions].to(head.dtype), head, targets, chunk_size)
    return AnswerLogprobs(logp, positions)


def count_targets(labels: Tensor) -> Tensor:
    """How many tokens of ``labels: [B, T]`` are learned (each predicted by the position before)."""
    return (labels[:, 1:] != -100).sum()
