"""Where inference runs: one rule for every model a stage runs without training it.

Candidate sampling, the reference log-probs, the evaluation's answers and ``explain`` load their
model through ``load_for_inference``, which places it on ``generation.device``; their inputs
follow the model's device. Training places its models itself (Lightning, ``sft``/``dpo``
``accelerator`` and ``devices``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from cme_vlm.errors import ConfigError
from cme_vlm.models.loading import LoadedModel, load_model
from cme_vlm.schema import ExperimentConfig, GenerationConfig


def inference_device(generation: GenerationConfig) -> torch.device:
    """``generation.device``: ``auto`` is the first CUDA GPU when one is visible, else the CPU; else a torch device."""
    if generation.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(generation.device)
    except RuntimeError:
        raise ConfigError(f"generation.device='{generation.device}' is not a torch device. Use auto, cpu, cuda or "
                          "cuda:N.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"generation.device={generation.device} but torch sees no CUDA GPU here "
                          "(torch.cuda.is_available() is False). Set generation.device=auto or cpu.")
    return device


def load_for_inference(cfg: ExperimentConfig, path: str | Path | None = None) -> LoadedModel:
    """``load_model(cfg, path)`` placed on ``inference_device(cfg.generation)``."""
    loaded = load_model(cfg, path)
    loaded.model.to(inference_device(cfg.generation))
    return loaded
