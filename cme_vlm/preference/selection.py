"""Pair selection: a judge, verifiable checks, or both designate the accepted and rejected answer among
K candidates + ground truth.

Position bias is mitigated by showing the options in an order shuffled with a seed recorded in
the pair (``order_seed``) and, with ``preference.two_pass``, by asking again in reversed order
and keeping only verdicts that agree. Records the judge cannot separate (tied or too-close
scores, an inconsistent verdict, fewer than two distinct answers) are kept out with the reason.

``preference.selection`` sets how the verifiable checks (``cme_vlm.preference.checks``) take part:

- ``judge``: the judge alone picks; the checks of its pair are recorded, nothing else changes.
- ``filter``: the judge picks; a pair whose accepted answer fails a check the rejected answer passes
  is vetoed. ``filter_action=drop`` keeps it out; ``flip`` swaps the two when the rejected answer
  passes every check the accepted one passes (and one more), and keeps it out otherwise (each fails
  a check the other passes, so the swapped pair would be vetoed as well).
- ``checks``: no judge is asked. The accepted answer has the highest ``CandidateChecks.rank`` (most
  checks passed, then the higher-priority ones), the rejected the lowest; among equal ranks the one
  shown first in the record's seeded order wins, so ``order_seed`` reproduces every tie-break.
  When all answers rank equal the record is kept out.

With the checks at hand, ``judge_agrees`` records whether they prefer the judge's accepted answer
(``checks_prefer``); it is None where either side expresses no preference.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass, replace
from typing import Any, Protocol

from cme_vlm.data.geometry import MaskGeometry
from cme_vlm.preference.checks import CandidateChecker, CandidateChecks, checks_prefer
from cme_vlm.schema import FilterAction, PreferenceConfig, SelectionMode


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
    decided_by: str = "judge"  # "judge" or "checks": who chose the pair, or kept the record out
    accepted_checks: CandidateChecks | None = None
    rejected_checks: CandidateChecks | None = None
    judge_agrees: bool | None = None  # do the checks prefer the judge's accepted answer? None: no preference

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


def _kept_out(seed: int, reason: str, decided_by: str = "judge") -> Selection:
    return Selection(None, None, math.nan, math.nan, seed, reason, decided_by)


def _ask(judge: PairJudge, context: PairContext, shown: list[str]) -> tuple[str, str, Verdict] | str:
    """The judge's pair as texts, or the reason it gives none."""
    v = judge.choose(context, shown)
    valid = range(len(shown))
    if v.accepted is None or v.rejected is None or v.accepted not in valid or v.rejected not in valid:
        return f"judge cannot separate the candidates ({v.reason or 'no pair designated'})"
    if v.accepted == v.rejected:
        return f"judge designated the same answer as accepted and rejected ({v.reason})"
    return shown[v.accepted], shown[v.rejected], v


def _judged(judge: PairJudge, context: PairContext, shown: list[str], cfg: PreferenceConfig, seed: int) -> Selection:
    """The judge's pair of the options in this order, after the margin and consistency rules."""
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


def _by_checks(shown: list[str], checks: dict[str, CandidateChecks], seed: int) -> Selection:
    """The highest- and lowest-ranked answers; ``index`` takes the first shown among equal ranks."""
    ranks = [checks[text].rank for text in shown]
    best, worst = max(ranks), min(ranks)
    if best == worst:
        return _kept_out(seed, f"checks cannot separate the candidates (each passes {best[0]} of 4)", "checks")
    accepted, rejected = shown[ranks.index(best)], shown[ranks.index(worst)]
    return Selection(accepted, rejected, math.nan, math.nan, seed, "", "checks", checks[accepted], checks[rejected])


def _filtered(judged: Selection, action: FilterAction) -> Selection:
    """The judge's pair, vetoed (dropped or flipped) when its accepted answer fails a check the rejected passes."""
    assert judged.accepted_checks is not None and judged.rejected_checks is not None
    objections = judged.accepted_checks.failed_where(judged.rejected_checks)
    if not objections:
        return judged
    failed = ", ".join(objections)
    if action is FilterAction.flip and judged.judge_agrees is False:
        return replace(
            judged, accepted=judged.rejected, rejected=judged.accepted, accepted_score=judged.rejected_score,
            rejected_score=judged.accepted_score, accepted_checks=judged.rejected_checks,
            rejected_checks=judged.accepted_checks, decided_by="checks",
            reason=f"checks flipped the judge's pair (its accepted answer failed {failed})",
        )
    return replace(judged, accepted=None, rejected=None, decided_by="checks",
                   reason=f"checks veto the judge's pair (its accepted answer fails {failed})")


def select_pair(
    judge: PairJudge | None,
    context: PairContext,
    candidates: list[str],
    cfg: PreferenceConfig,
    record_id: str,
    checker: CandidateChecker | None = None,
) -> Selection:
    """One record's pair from its candidates (and ground truth), shown in a seeded order, as ``cfg.selection`` says.

    ``judge`` may be None with ``selection=checks``; ``checker`` may be None with ``selection=judge``
    (no check results are recorded then).
    """
    if judge is None and cfg.selection is not SelectionMode.checks:
        raise ValueError(f"select_pair: preference.selection={cfg.selection.value} needs a pair judge")
    if checker is None and cfg.selection is not SelectionMode.judge:
        raise ValueError(f"select_pair: preference.selection={cfg.selection.value} needs a CandidateChecker")
    seed = order_seed(cfg.seed, record_id)
    pool = candidate_pool(candidates, context.ground_truth, cfg.include_ground_truth)
    if len(pool) < 2:
        picker = "checks" if cfg.selection is SelectionMode.checks else "judge"
        return _kept_out(seed, "fewer than two distinct answers", picker)
    shown = random.Random(seed).sample(pool, len(pool))
    checks = {text: checker.check(context.structure, context.side, text) for text in shown} if checker else {}
    if cfg.selection is SelectionMode.checks:
        return _by_checks(shown, checks, seed)
    judged = _judged(judge, context, shown, cfg, seed)
    if not judged.ok or not checks:
        return judged
    accepted, rejected = checks[judged.accepted], checks[judged.rejected]
    judged = replace(judged, accepted_checks=accepted, rejected_checks=rejected,
                     judge_agrees=checks_prefer(accepted, rejected))
    return _filtered(judged, cfg.filter_action) if cfg.selection is SelectionMode.filter else judged


def judge_checks_agreement(judge_agrees: list[bool | None]) -> dict[str, Any]:
    """How often the checks prefer the judge's accepted answer to its rejected one.

    ``judge_agrees``: per record, ``Selection.judge_agrees``. The rate counts only the records where
    both express a preference (the judge designated a pair and the checks prefer one of its answers);
    ``rate`` is None when there is none.
    """
    both = [agrees for agrees in judge_agrees if agrees is not None]
    return {"rate": sum(both) / len(both) if both else None, "records": len(both), "agree": sum(both)}
