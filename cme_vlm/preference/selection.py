"""Pair selection: a judge designates the accepted and rejected answer among K candidates + ground truth.

Position bias is mitigated by showing the options in an order shuffled with a seed recorded in
the pair (``order_seed``) and, with ``preference.two_pass``, by asking again in reversed order
and keeping only verdicts that agree. Records the judge cannot separate (tied or too-close
scores, an inconsistent verdict, fewer than two distinct answers) are kept out with the reason.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass
from typing import Protocol

from cme_vlm.data.geometry import MaskGeometry
from cme_vlm.schema import PreferenceConfig


@dataclass(frozen=True)
class PairContext:
    """What a judge may know about a case: text (and, for the local rubric, the mask's geometry)."""

    structure: str
    side: str
    phase: str
    prompt: str
    ground_truth: str
    geometry: MaskGeometry | str = ""  # used by the offline rubric only; never sent


@dataclass(frozen=True)
class Verdict:
    """A judge's answer over the options as shown; ``None`` indices: it cannot separate them."""

    accepted: int | None
    rejected: int | None
    accepted_score: float = math.nan
    rejected_score: float = math.nan
    reason: str = ""


class PairJudge(Protocol):
    name: str

    def choose(self, context: PairContext, options: list[str]) -> Verdict:
        """Designate the best and the worst of ``options`` (shown in this order)."""


@dataclass(frozen=True)
class Selection:
    """The chosen pair, or ``accepted is None`` and ``reason`` says why the record is kept out."""

    accepted: str | None
    rejected: str | None
    accepted_score: float
    rejected_score: float
    order_seed: int
    reason: str

    @property
    def ok(self) -> bool:
        return self.accepted is not None


def order_seed(seed: int, record_id: str) -> int:
    """A per-record seed for the option order, stable across runs and machines."""
    return int(hashlib.sha256(f"{seed}\x00{record_id}".encode()).hexdigest()[:12], 16)


def candidate_pool(candidates: list[str], ground_truth: str, include_ground_truth: bool) -> list[str]:
    """Distinct non-empty answers (whitespace-normalised), the ground truth last if included."""
    pool: dict[str, str] = {}
    for text in [*candidates, *([ground_truth] if include_ground_truth else [])]:
        key = " ".join(text.split())
        if key and key not in pool:
            pool[key] = text.strip()
    return list(pool.values())


def _kept_out(seed: int, reason: str) -> Selection:
    return Selection(None, None, math.nan, math.nan, seed, reason)


def _ask(judge: PairJudge, context: PairContext, shown: list[str]) -> tuple[str, str, Verdict] | str:
    """The judge's pair as texts, or the reason it gives none."""
    v = judge.choose(context, shown)
    valid = range(len(shown))
    if v.accepted is None or v.rejected is None or v.accepted not in valid or v.rejected not in valid:
        return f"judge cannot separate the candidates ({v.reason or 'no pair designated'})"
    if v.accepted == v.rejected:
        return f"judge designated the same answer as accepted and rejected ({v.reason})"
    return shown[v.accepted], shown[v.rejected], v


def select_pair(
    judge: PairJudge, context: PairContext, candidates: list[str], cfg: PreferenceConfig, record_id: str
) -> Selection:
    """Judge one record's candidates (and ground truth) in a seeded order; apply the margin and consistency rules."""
    seed = order_seed(cfg.seed, record_id)
    pool = candidate_pool(candidates, context.ground_truth, cfg.include_ground_truth)
    if len(pool) < 2:
        return _kept_out(seed, "fewer than two distinct answers")
    shown = random.Random(seed).sample(pool, len(pool))
    first = _ask(judge, context, shown)
    if isinstance(first, str):
        return _kept_out(seed, first)
    accepted, rejected, verdict = first
    margin = verdict.accepted_score - verdict.rejected_score
    if math.isfinite(margin) and margin < cfg.min_margin:
        return _kept_out(seed, f"score margin {margin:.3f} below preference.min_margin={cfg.min_margin}")
    if cfg.two_pass:
        second = _ask(judge, context, shown[::-1])
        if isinstance(second, str):
            return _kept_out(seed, f"second pass (reversed order): {second}")
        if second[:2] != (accepted, rejected):
            return _kept_out(seed, "inconsistent verdicts between the two reversed orders")
    return Selection(accepted, rejected, verdict.accepted_score, verdict.rejected_score, seed, "")
