"""Peak memory of ``cme-vlm explain`` (one frame, greedy), measured on fake tensors like the training steps.

The model is built in its inference dtype (``model.dtype``; ``auto``: bf16 as on a GPU) on fake
tensors; one image of ``bench.image_side`` pixels and a prompt of ``bench.prompt_tokens`` tokens are
prefilled (vision tower, then the prompt) and the first token decoded, as ``explain`` does through
the generation engine. A fake run cannot decode on: the end-of-answer check reads token values it
does not have, so the cache's growth over the remaining ``eval.max_new_tokens - 1`` tokens is added
to the decode step's peak from the cache's own size per token. The peak is the larger of the
prefill's and the decode's.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import Cache

from cme_vlm import atomic
from cme_vlm.bench.fake_execution import FakeExecution
from cme_vlm.bench.inputs import generation_inputs
from cme_vlm.bench.memory import PeakTracker, StepMemory, kept_measurement, user_measurements
from cme_vlm.config import to_dict
from cme_vlm.models.decoding import Draw, SharedPrefix
from cme_vlm.models.generation import encode_prompts
from cme_vlm.models.loading import load_model
from cme_vlm.schema import CacheKind, ExperimentConfig, GenerationConfig

STAGE = "explain"


def inference_dtype(cfg: ExperimentConfig) -> torch.dtype:
    return torch.bfloat16 if cfg.model.dtype == "auto" else getattr(torch, cfg.model.dtype)


def explain_settings(cfg: ExperimentConfig) -> dict[str, Any]:
    """Every setting the peak depends on."""
    model = {k: v for k, v in to_dict(cfg.model).items() if k not in ("name", "path", "tokenizer")}
    model["dtype"] = str(inference_dtype(cfg)).removeprefix("torch.")
    shapes = {k: getattr(cfg.bench, k) for k in ("image_side", "prompt_tokens")}
    return {"stage": STAGE, "model": model, "bench": shapes, "max_new_tokens": cfg.eval.max_new_tokens}


def explain_key(cfg: ExperimentConfig) -> str:
    return hashlib.sha256(json.dumps(explain_settings(cfg), sort_keys=True, default=str).encode()).hexdigest()[:16]


def cache_bytes_per_token(cache: Cache) -> int:
    """Bytes the attention layers' keys and values add per decoded token (a linear-attention state does not grow)."""
    grown = [layer for layer in cache.layers if getattr(layer, "keys", None) is not None and layer.keys.numel()]
    return sum((layer.keys.numel() + layer.values.numel()) * layer.keys.element_size() // layer.keys.shape[-2]
               for layer in grown)


def _tracker(model: torch.nn.Module) -> PeakTracker:
    tracker = PeakTracker()
    tracker.track_external(model)
    return tracker


def measure_explain_memory(cfg: ExperimentConfig, fake: bool = True) -> StepMemory:
    """The peak of ``explain`` on one bench image (``fake=False``: real tensors on the CPU)."""
    started = time.perf_counter()
    execution = FakeExecution() if fake else None
    if execution:
        with execution.build(inference_dtype(cfg)):
            loaded = load_model(cfg)
    else:
        loaded = load_model(cfg)
    images, prompts = generation_inputs(cfg, loaded, 1)
    inputs = dict(encode_prompts(loaded, images, prompts))
    inputs = execution.fake(inputs) if execution else inputs
    prefill_tracker, decode_tracker = _tracker(loaded.model), _tracker(loaded.model)
    with execution.run() if execution else nullcontext(), torch.no_grad():
        with prefill_tracker:
            prefix = SharedPrefix(loaded, inputs, GenerationConfig(cache=CacheKind.dynamic))
        with decode_tracker:
            prefix.new_tokens([Draw(0)], 1)
    growth = cache_bytes_per_token(prefix.cache) * (cfg.eval.max_new_tokens - 1)
    (prefill_peak, prefill_parts), (decode_peak, decode_parts) = prefill_tracker.peak(), decode_tracker.peak()
    if decode_peak + growth > prefill_peak:
        peak, parts = decode_peak + growth, {**decode_parts, "activations": decode_parts["activations"] + growth}
    else:
        peak, parts = prefill_peak, prefill_parts
    shape = {"sequences": 1, "sequence_length": int(inputs["input_ids"].shape[1]),
             "new_tokens": cfg.eval.max_new_tokens, "cache_bytes_per_token": cache_bytes_per_token(prefix.cache)}
    provenance = {"method": "fake tensors, torch MemTracker" if fake else "real tensors on CPU, torch MemTracker",
                  "torch": torch.__version__, "transformers": transformers.__version__, "machine": platform.machine(),
                  "seconds": f"{time.perf_counter() - started:.0f}", "date": time.strftime("%Y-%m-%d")}
    return StepMemory(STAGE, explain_key(cfg), peak, parts, explain_settings(cfg), shape, provenance)


def record_explain_memory(cfg: ExperimentConfig, folder: Path | None = None) -> StepMemory:
    """Measure and keep the result where ``cached_explain_memory`` (the dry-run) finds it."""
    result = measure_explain_memory(cfg)
    atomic.write_json((folder or user_measurements()) / f"{STAGE}-{result.key}.json", result.as_dict())
    return result


def cached_explain_memory(cfg: ExperimentConfig, folders: tuple[Path, ...] | None = None) -> StepMemory | None:
    """The kept measurement of exactly these settings, if recorded (the user's first, then the shipped)."""
    return kept_measurement(f"{STAGE}-{explain_key(cfg)}.json", folders)


def explain_row(cfg: ExperimentConfig) -> tuple[str, ...]:
    """The dry-run's memory row of ``explain``: stage, trained, tokens and the GiB columns, or "not measured"."""
    measured = cached_explain_memory(cfg)
    if measured is None:
        return STAGE, "–", "–", "–", "–", "–", "–", "not measured"
    tokens = f"1 × {measured.shape['sequence_length']} + {measured.shape['new_tokens']} new"
    return STAGE, "–", tokens, *measured.gib()
