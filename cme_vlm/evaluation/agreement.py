"""Judge–expert agreement on the blinded sheet: rank correlation of scores, agreement on the preferred model.

The sheet asks the expert one overall 1–5 score per answer and the preferred model(s) per case;
the judge gives per-criterion scores, a clinical and a conciseness score, and their weighted
composite. The only honest pairing is the expert's overall score with the judge's composite; the
judge's other scores are listed as having no expert counterpart on the sheet.

Rank correlation is Spearman's ρ over all answers of the rated cases (each model's answer to each
case is one pair), computed as the Pearson correlation of mid-ranks so that the many ties of
1–5 scores get average ranks. Spearman rather than Kendall's τ: it is a correlation of ranks
that can be computed for all bootstrap resamples at once. Its confidence interval is a
percentile bootstrap that resamples *cases*, each with all its models' answers, because the
answers to one case are not independent (which a Fisher-z interval would assume). The bootstrap
is drawn here, not with ``scipy.stats.bootstrap``: that one resamples single observations and
returns a NaN interval as soon as one resample has constant scores (frequent with few cases
scored 1–5); here such resamples, where ρ is undefined, are left out and counted.

Preferred model: the judge prefers the model(s) with the highest composite on a case; a case
agrees when every model the judge prefers is among the expert's preferred ones (the expert may
name several). Cases where the expert preferred none are left out. The rate has a Wilson interval.

The result, stored as ``metrics["expert"]["agreement"]``, is plain JSON::

    {"method": {"rank_correlation": str, "preferred": str, "confidence": 0.95, "resamples": int, "seed": int},
     "criteria": {"score": {"judge": "composite",
                            "overall": RANK, "per_structure": {structure: RANK}}},
     "judge_only_criteria": [judge criterion, ...],
     "preferred": {"overall": PREF, "per_structure": {structure: PREF}}}
    RANK = {"rho": float | None, "ci_low": float | None, "ci_high": float | None,
            "n_cases": int, "n_answers": int, "undefined_resamples": int}
    PREF = {"agree": int, "n_cases": int, "rate": float | None, "ci_low": float | None, "ci_high": float | None}

``None`` marks a figure that is undefined: ρ when one side's scores are all equal, an interval
with fewer than two cases, a rate with no case.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
RESAMPLES = 9999
EXPERT_CRITERION = "score"  # the sheet's score_<label> columns
JUDGE_COUNTERPART = "composite"  # the judge's score compared with it


@dataclass(frozen=True)
class RatedCase:
    """One unblinded case of the imported sheet. ``judge``/``expert``: model -> score; every model in both."""

    structure: str
    judge: dict[str, float]
    expert: dict[str, float]
    preferred: frozenset[str]  # the models the expert preferred; empty if none

    @property
    def judge_preferred(self) -> frozenset[str]:
        """The model(s) with the judge's highest score on this case (all of them when tied)."""
        best = max(self.judge.values())
        return frozenset(m for m, s in self.judge.items() if s == best)


def spearman_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman's ρ of each row of ``x`` with the same row of ``y``: Pearson correlation of mid-ranks.

    ``x``, ``y``: [B, N] -> [B]; NaN for a row where either side is constant.
    """
    rx, ry = stats.rankdata(x, axis=-1), stats.rankdata(y, axis=-1)
    rx, ry = rx - rx.mean(axis=-1, keepdims=True), ry - ry.mean(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (rx * ry).sum(axis=-1) / np.sqrt((rx**2).sum(axis=-1) * (ry**2).sum(axis=-1))


def _number(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def rank_agreement(cases: list[RatedCase], rng: np.random.Generator) -> dict[str, Any]:
    """Spearman's ρ of judge against expert scores over all answers, with a case-resampling bootstrap interval."""
    models = sorted(cases[0].judge) if cases else []
    judge = np.array([[c.judge[m] for m in models] for c in cases], dtype=float).reshape(len(cases), len(models))
    expert = np.array([[c.expert[m] for m in models] for c in cases], dtype=float).reshape(judge.shape)
    rho = spearman_rows(judge.reshape(1, -1), expert.reshape(1, -1))[0] if judge.size > 1 else np.nan
    low = high = np.nan
    undefined = 0
    if len(cases) >= 2 and np.isfinite(rho):
        picks = rng.integers(0, len(cases), size=(RESAMPLES, len(cases)))
        boot = spearman_rows(judge[picks].reshape(RESAMPLES, -1), expert[picks].reshape(RESAMPLES, -1))
        defined = boot[np.isfinite(boot)]
        undefined = RESAMPLES - defined.size
        if defined.size:
            low, high = np.quantile(defined, [(1 - CONFIDENCE) / 2, (1 + CONFIDENCE) / 2])
    return {"rho": _number(rho), "ci_low": _number(low), "ci_high": _number(high), "n_cases": len(cases),
            "n_answers": int(judge.size), "undefined_resamples": int(undefined)}


def preference_agreement(cases: list[RatedCase]) -> dict[str, Any]:
    """How often every model the judge prefers is among the expert's preferred, over cases with a preference."""
    rated = [c for c in cases if c.preferred]
    agree = sum(c.judge_preferred <= c.preferred for c in rated)
    if not rated:
        return {"agree": 0, "n_cases": 0, "rate": None, "ci_low": None, "ci_high": None}
    ci = stats.binomtest(agree, len(rated)).proportion_ci(confidence_level=CONFIDENCE, method="wilson")
    return {"agree": agree, "n_cases": len(rated), "rate": agree / len(rated),
            "ci_low": float(ci.low), "ci_high": float(ci.high)}


def _overall_and_per_structure(cases: list[RatedCase], figure: Callable[[list[RatedCase]], dict]) -> dict[str, Any]:
    structures = dict.fromkeys(c.structure for c in cases)
    return {"overall": figure(cases),
            "per_structure": {s: figure([c for c in cases if c.structure == s]) for s in structures}}


def judge_expert_agreement(cases: list[RatedCase], judge_criteria: list[str], seed: int) -> dict[str, Any]:
    """The agreement figures of the module docstring; ``judge_criteria``: the judge's scores besides the composite."""
    rng = np.random.default_rng(seed)
    return {
        "method": {
            "rank_correlation": "Spearman's rho (mid-ranks) over all answers of the rated cases; percentile "
                                "bootstrap interval resampling cases, undefined resamples left out",
            "preferred": "a case agrees when every model with the judge's top score is among the expert's "
                         "preferred; cases without an expert preference left out; Wilson interval",
            "confidence": CONFIDENCE, "resamples": RESAMPLES, "seed": seed,
        },
        "criteria": {EXPERT_CRITERION: {"judge": JUDGE_COUNTERPART,
                                        **_overall_and_per_structure(cases, lambda c: rank_agreement(c, rng))}},
        "judge_only_criteria": list(judge_criteria),
        "preferred": _overall_and_per_structure(cases, preference_agreement),
    }
