"""Count what a Qwen-VL model runs: images through its vision encoder, and prefills (multi-token forwards)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ForwardCounts:
    images_encoded: list[int] = field(default_factory=list)  # images per vision-encoder call
    prefill_rows: list[int] = field(default_factory=list)  # rows per language-model forward of more than one token


@contextmanager
def counting_forwards(model: Any) -> Iterator[ForwardCounts]:
    """Hooks on ``model.model.visual`` and ``model.model.language_model`` while the context is open."""
    counts = ForwardCounts()

    def encoded(module: Any, args: Any, kwargs: dict[str, Any], out: Any) -> None:
        counts.images_encoded.append(len(kwargs["grid_thw"]))

    def forwarded(module: Any, args: Any, kwargs: dict[str, Any], out: Any) -> None:
        if kwargs["inputs_embeds"].shape[1] > 1:
            counts.prefill_rows.append(len(kwargs["inputs_embeds"]))

    hooks = [model.model.visual.register_forward_hook(encoded, with_kwargs=True),
             model.model.language_model.register_forward_hook(forwarded, with_kwargs=True)]
    try:
        yield counts
    finally:
        for hook in hooks:
            hook.remove()
