"""Each row of one batched ``generate`` sampled with its own temperature, top-k, top-p and seed.

transformers' warpers take one setting for the whole batch and draw every row's token from the
one global generator, so K candidates with K settings would need K ``generate`` calls, and a
row's tokens would depend on the rows beside it. ``RowSampler`` is a logits processor that
applies the warpers of every row at once (each row's own temperature, top-k and top-p as
transformers computes them), then draws each row's token with that row's own
``torch.Generator`` by the exponential race: ``argmax_i p_i / E_i`` with ``E_i ~ Exp(1)`` is a
draw from ``p`` (vLLM samples seeded requests the same way). It returns scores whose argmax is
the drawn token, so ``generate`` runs with ``do_sample=False``; rows without a setting keep
their scores and stay greedy.

A row's generator draws the noise of ``NOISE_STEPS`` tokens in one call (on the CPU the same
numbers as one call per token), so a step costs a few batched operations and, every
``NOISE_STEPS`` tokens, one call per row: not one per row and token. The buffer holds
``rows x NOISE_STEPS x V`` float32 (160 rows of Qwen's 152,064 tokens: 0.78 GB).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from cme_vlm.schema import SamplingSetting

NOISE_STEPS = 8  # a constant: a row's draws must not depend on how many rows share its batch


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
        sampled = [(row, s) for row, s in enumerate(settings) if s is not None]
        self.sampled = torch.tensor([row for row, _ in sampled], dtype=torch.long, device=device)
        chosen = [s for _, s in sampled]
        self.temperature = torch.tensor([[s.temperature] for s in chosen], device=device)
        # the rows top-k filters, how many tokens each keeps; the rows top-p filters, the mass each may cut
        self.top_k_rows = torch.tensor([i for i, s in enumerate(chosen) if s.top_k > 0], dtype=torch.long, device=device)
        self.keep = [s.top_k for s in chosen if s.top_k > 0]
        self.kth = torch.tensor([[k - 1] for k in self.keep], dtype=torch.long, device=device)
        self.cut = torch.tensor([[1 - s.top_p] for s in chosen if s.top_p < 1.0], device=device)
        self.top_p_rows = torch.tensor([i for i, s in enumerate(chosen) if s.top_p < 1.0], dtype=torch.long,
                                       device=device)
        self.generators = [torch.Generator(device=device).manual_seed(s.seed) for s in chosen]
        self.noise: Tensor | None = None
        self.step = 0

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """``scores``: ``[R, V]``; the sampled rows come back as 0 at the drawn token and -inf elsewhere."""
        if not self.generators:
            return scores
        probs = self.warp(scores[self.sampled]).softmax(-1)
        race = self._noise(probs)
        # a zero draw would make 0/0 = nan for a filtered token, and argmax would pick it
        drawn = (probs / race.clamp_min(torch.finfo(race.dtype).tiny)).argmax(-1)
        out = scores.clone()
        out[self.sampled] = float("-inf")
        out[self.sampled, drawn] = 0.0
        return out

    def warp(self, scores: Tensor) -> Tensor:
        """``[S, V]`` scores of the sampled rows through each row's temperature, top-k and top-p, as transformers' warpers."""
        scores = scores / self.temperature
        if len(self.top_k_rows):
            scores[self.top_k_rows] = self._top_k(scores[self.top_k_rows])
        if len(self.top_p_rows):
            scores[self.top_p_rows] = self._top_p(scores[self.top_p_rows])
        return scores

    def _top_k(self, scores: Tensor) -> Tensor:
        vocabulary = scores.shape[-1]
        ranked = torch.topk(scores, min(max(self.keep), vocabulary)).values  # [rows, k_max], descending
        kth = ranked.gather(1, self.kth.clamp_max(vocabulary - 1))
        return scores.masked_fill(scores < kth, float("-inf"))

    def _top_p(self, scores: Tensor) -> Tensor:
        ascending, order = torch.sort(scores, descending=False)
        cut = ascending.softmax(-1).cumsum(-1) <= self.cut
        cut[:, -1] = False  # the most likely token always stays
        return scores.masked_fill(cut.scatter(1, order, cut), float("-inf"))

    def _noise(self, probs: Tensor) -> Tensor:
        """``[S, V]`` Exp(1) draws for this token, each row from its own generator."""
        if self.step % NOISE_STEPS == 0:
            self.noise = torch.empty((len(self.generators), NOISE_STEPS, probs.shape[-1]), dtype=probs.dtype,
                                     device=probs.device)
            for row, generator in zip(self.noise, self.generators, strict=True):
                row.exponential_(generator=generator)
        race = self.noise[:, self.step % NOISE_STEPS]
        self.step += 1
        return race
