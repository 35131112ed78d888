"""The generation rows of the benchmark: candidate sampling and ``explain``, the way the stages generate.

This module imports no training code, so ``cme-vlm bench --only generate`` runs where the
training stack's trackers are not installed (the device machine of ``bench/device_generate.sh``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch

from cme_vlm.bench.inputs import generation_inputs
from cme_vlm.bench.timing import median, peak_memory_gib, reset_peak_memory, time_calls
from cme_vlm.config import to_dict
from cme_vlm.models.decoding import DecodeMode, Draw, StaticCaches
from cme_vlm.models.generation import generate, prefill
from cme_vlm.models.loading import LoadedModel
from cme_vlm.schema import ExperimentConfig, SamplingSetting


def _generation_call(cfg: ExperimentConfig, loaded: LoadedModel, batch_size: int,
                     sampling: SamplingSetting | None) -> Callable[[int], Any]:
    """``call(n)``: ``n`` new tokens for each of ``batch_size`` bench prompts, the way the stages generate them.

    Sampled: one prefill of the prompts, then one draw each (its own seed), as candidate sampling
    decodes chunk after chunk (into the same static caches). Greedy: ``generate``, as ``explain`` and
    evaluation do.
    """
    images, prompts = generation_inputs(cfg, loaded, batch_size)
    if sampling is None:
        return lambda n: generate(loaded, images, prompts, n, batch_size, cfg.generation)
    draws = [Draw(i, replace(sampling, seed=sampling.seed + i)) for i in range(batch_size)]
    caches = StaticCaches()
    return lambda n: prefill(loaded, images, prompts, cfg.generation, caches).new_tokens(draws, n)


def generation_row(cfg: ExperimentConfig, loaded: LoadedModel, batch_size: int, sampling: SamplingSetting | None,
                   device: torch.device) -> dict[str, Any]:
    """Time generation on ``batch_size`` prompts, forced to exactly ``bench.max_new_tokens`` new tokens each.

    A one-token call times the prefill; the rest of a full call, over the remaining tokens, is the
    decode step. The warm-up call has the timed calls' shapes, so compilation and CUDA-graph
    capture happen in it; its time (``warmup_s``) is what a fresh process waits for its first answer.
    """
    b = cfg.bench
    call = _generation_call(cfg, loaded, batch_size, sampling)
    config = loaded.model.generation_config
    mode = DecodeMode.resolve(cfg.generation, device)
    name = f"generate bs={batch_size}" if sampling else f"explain bs={batch_size} (greedy)"
    row: dict[str, Any] = {
        "row": name, "batch_size": batch_size, "sampling": to_dict(sampling) if sampling else "greedy",
        "decode": {"static_cache": mode.static_cache, "compiled": mode.compiled},
        "shape": {"image_side": b.image_side, "prompt_tokens": b.prompt_tokens, "new_tokens_per_sequence": b.max_new_tokens},
    }

    def forced(n: int) -> Any:
        config.min_new_tokens = n  # no early end token
        return call(n)

    try:
        warmup = time_calls(lambda: forced(b.max_new_tokens), device, 0, 1)[0]
        reset_peak_memory(device)
        firsts = time_calls(lambda: forced(1), device, 0, b.generation_steps)
        times = time_calls(lambda: forced(b.max_new_tokens), device, 0, b.generation_steps)
    except torch.OutOfMemoryError:
        return {**row, "status": "out of memory", "peak_memory_gib": peak_memory_gib(device)}
    finally:
        config.min_new_tokens = None
    step, first = median(times), median(firsts)
    generated = batch_size * b.max_new_tokens
    decode_step = (step - first) / (b.max_new_tokens - 1) if b.max_new_tokens > 1 else None
    return {**row, "status": "ok", "steps": len(times), "step_times_s": times, "step_time_s": step,
            "warmup_s": warmup, "prefill_s": first, "decode_step_s": decode_step, "tokens_per_step": generated,
            "tokens_per_s": generated / step, "peak_memory_gib": peak_memory_gib(device)}
