"""Each row of one batched ``generate`` sampled with its own temperature, top-k, top-p and seed.

transformers' warpers take one setting for the whole batch and draw every row's token from the
one global generator, so K candidates with K settings would need K ``generate`` calls, and a
row's tokens would depend on the rows beside it. ``RowSampler`` is a logits processor that
applies transformers' own warpers to the rows of each setting, then draws each row's token with
that row's own ``torch.Generator`` by the exponential race: ``argmax_i p_i / E_i`` with
``E_i ~ Exp(1)`` is a draw from ``p`` (vLLM samples seeded requests the same way). It returns
scores whose argmax is the drawn token, so ``generate`` runs with ``do_sample=False``; rows
without a setting keep their scores and stay greedy.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from cme_vlm.schema import SamplingSetting


def warpers(setting: SamplingSetting) -> LogitsProcessorList:
    """transformers' warpers for one setting, in the order ``generate`` applies them (``top_k <= 0``: off)."""
    chain = LogitsProcessorList([TemperatureLogitsWarper(setting.temperature)])
    if setting.top_k > 0:
        chain.append(TopKLogitsWarper(setting.top_k))
    if setting.top_p < 1.0:
        chain.append(TopPLogitsWarper(setting.top_p))
    return chain


class RowSampler(LogitsProcessor):
    """Per-row seeded sampling; ``settings[r]`` is row ``r``'s setting, None for a greedy row."""

    def __init__(self, settings: Sequence[SamplingSetting | None], device: torch.device) -> None:
        groups: dict[tuple[float, int, float], list[int]] = {}
        for row, s in enumerate(settings):
            if s is not None:
                groups.setdefault((s.temperature, s.top_k, s.top_p), []).append(row)
        self.groups = [(torch.tensor(rows, device=device), warpers(settings[rows[0]])) for rows in groups.values()]
        self.sampled = torch.tensor([r for r, s in enumerate(settings) if s is not None], device=device)
        self.generators = [
            torch.Generator(device=device).manual_seed(s.seed) for s in settings if s is not None
        ]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """``scores``: ``[R, V]``; the sampled rows come back as 0 at the drawn token and -inf elsewhere."""
        if not self.generators:
            return scores
        warped = scores.clone()
        for rows, chain in self.groups:
            warped[rows] = chain(input_ids[rows], scores[rows])
        probs = warped[self.sampled].softmax(-1)
        race = torch.empty_like(probs)
        for row, generator in zip(race, self.generators, strict=True):
            row.exponential_(generator=generator)
        # a zero draw would make 0/0 = nan for a filtered token, and argmax would pick it
        drawn = (probs / race.clamp_min(torch.finfo(race.dtype).tiny)).argmax(-1)
        out = scores.clone()
        out[self.sampled] = float("-inf")
        out[self.sampled, drawn] = 0.0
        return out
