"""Count what a vision-language model runs: its vision tower's calls, and prefills (multi-token decoder forwards)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor


@dataclass
class ForwardCounts:
    vision_pixels: list[int] = field(default_factory=list)  # pixel values (or patches) the vision tower takes, per call
    prefill_rows: list[int] = field(default_factory=list)  # rows per language-model forward of more than one token


@contextmanager
def counting_forwards(loaded: Any) -> Iterator[ForwardCounts]:
    """Hooks on the family's vision tower and decoder (``loaded.adapter.tower``) while the context is open."""
    counts = ForwardCounts()

    def encoded(module: Any, args: Any, kwargs: dict[str, Any], out: Any) -> None:
        counts.vision_pixels.append(next(t for t in (*args, *kwargs.values()) if isinstance(t, Tensor)).numel())

    def forwarded(module: Any, args: Any, kwargs: dict[str, Any], out: Any) -> None:
        if kwargs["inputs_embeds"].shape[1] > 1:
            counts.prefill_rows.append(len(kwargs["inputs_embeds"]))

    model, adapter = loaded.model, loaded.adapter
    hooks = [adapter.tower(model, "vision_encoder").register_forward_hook(encoded, with_kwargs=True),
             adapter.tower(model, "language_model").register_forward_hook(forwarded, with_kwargs=True)]
    try:
        yield counts
    finally:
        for hook in hooks:
            hook.remove()
