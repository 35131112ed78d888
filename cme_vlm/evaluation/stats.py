"""Per-structure breakdowns and paired significance tests between models."""

from __future__ import annotations

import itertools
import warnings
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
from scipy import stats

from cme_vlm.scoring.metrics import Summary, summarise


@dataclass(frozen=True)
class PairedTest:
    """Wilcoxon signed-rank test of per-answer scores of model ``a`` against model ``b``.

    ``median_diff`` is median(a - b); ``p_value`` is two-sided and NaN when there are no
    differences to rank (identical scores, or fewer than one pair).
    """

    a: str
    b: str
    metric: str
    statistic: float
    p_value: float
    median_diff: float
    n: int
    mean_diff: float = float("nan")

    def verdict(self, alpha: float = 0.05) -> str:
        if not np.isfinite(self.p_value):
            return f"{self.a} vs {self.b} on {self.metric}: no difference to test (n={self.n})"
        lead = self.median_diff if self.median_diff != 0 else self.mean_diff  # a median of ties says nothing
        better, worse = (self.a, self.b) if lead > 0 else (self.b, self.a)
        if self.p_value < alpha:
            return (f"{better} is significantly better than {worse} on {self.metric} "
                    f"(p={self.p_value:.3g}, n={self.n})")
        return f"{self.a} and {self.b} do not differ significantly on {self.metric} (p={self.p_value:.3g}, n={self.n})"


def wilcoxon(a_name: str, a: list[float], b_name: str, b: list[float], metric: str) -> PairedTest:
    """Paired two-sided Wilcoxon signed-rank test on the answers both models scored (finite in both)."""
    if len(a) != len(b):
        raise ValueError(f"{a_name} has {len(a)} scores and {b_name} {len(b)}; a paired test needs the same answers")
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    diff = x[keep] - y[keep]
    n = int(keep.sum())
    median = float(np.median(diff)) if n else float("nan")
    mean = float(np.mean(diff)) if n else float("nan")
    if n == 0 or not np.any(diff):
        return PairedTest(a_name, b_name, metric, float("nan"), float("nan"), median, n, mean)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # scipy warns on small n; the n is reported
        result = stats.wilcoxon(x[keep], y[keep], zero_method="wilcox", alternative="two-sided")
    return PairedTest(a_name, b_name, metric, float(result.statistic), float(result.pvalue), median, n, mean)


def pairwise_tests(scores: dict[str, list[float]], metric: str) -> list[PairedTest]:
    """Wilcoxon tests for every pair of models, in the order the models are given."""
    return [wilcoxon(a, scores[a], b, scores[b], metric) for a, b in itertools.combinations(scores, 2)]


def by_structure(structures: list[str], values: list[float]) -> dict[str, Summary]:
    """Mean ± std of ``values`` per structure, structures in order of first appearance."""
    groups: dict[str, list[float]] = defaultdict(list)
    for structure, value in zip(structures, values, strict=True):
        groups[structure].append(value)
    return {s: summarise(v) for s, v in groups.items()}
