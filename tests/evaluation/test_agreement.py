"""Judge–expert agreement on constructed sheets whose agreement is known, and its report table."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from cme_vlm.evaluation.agreement import (
    RatedCase,
    judge_expert_agreement,
    preference_agreement,
    rank_agreement,
    spearman_rows,
)
from cme_vlm.evaluation.report import agreement_notes, agreement_table

MODELS = ("base", "sft", "dpo")


def _cases(judge: list[list[float]], expert: list[list[float]], structures: list[str]) -> list[RatedCase]:
    return [RatedCase(s, dict(zip(MODELS, j, strict=False)), dict(zip(MODELS, e, strict=False)), frozenset())
            for j, e, s in zip(judge, expert, structures, strict=True)]


def _rank(cases: list[RatedCase]) -> dict:
    return rank_agreement(cases, np.random.default_rng(0))


def test_experts_ranking_as_the_judge_give_rho_one_and_reversed_minus_one():
    judge = [[1.0, 3.5, 4.2], [2.0, 2.5, 4.8], [1.5, 3.0, 3.9], [1.2, 4.4, 4.6]]
    same = _rank(_cases(judge, judge, ["duodenum"] * 4))
    assert same["rho"] == pytest.approx(1.0) and (same["ci_low"], same["ci_high"]) == pytest.approx((1.0, 1.0))
    assert same["n_cases"] == 4 and same["n_answers"] == 12
    reversed_ = _rank(_cases(judge, [[6 - x for x in row] for row in judge], ["duodenum"] * 4))
    assert reversed_["rho"] == pytest.approx(-1.0) and reversed_["ci_high"] == pytest.approx(-1.0)


def test_a_small_case_computed_by_hand_overall_and_per_structure():
    # pooled answers (judge, expert): (1,1) (2,3) (3,2) (4,4); ranks differ by 1 twice:
    # rho = 1 - 6 * (1 + 1) / (4 * (16 - 1)) = 0.8
    cases = _cases([[1.0, 2.0], [3.0, 4.0]], [[1, 3], [2, 4]], ["duodenum", "pancreas"])
    result = judge_expert_agreement(cases, ["clinical", "conciseness", "laterality"], seed=0)
    score = result["criteria"]["score"]
    assert score["judge"] == "composite"
    assert score["overall"]["rho"] == pytest.approx(0.8)
    assert score["overall"]["n_cases"] == 2 and score["overall"]["n_answers"] == 4
    # each structure has one case of two answers in the same order: rho 1, no interval from one case
    assert set(score["per_structure"]) == {"duodenum", "pancreas"}
    for per in score["per_structure"].values():
        assert per["rho"] == pytest.approx(1.0) and per["n_cases"] == 1 and per["n_answers"] == 2
        assert per["ci_low"] is None and per["ci_high"] is None
    assert result["judge_only_criteria"] == ["clinical", "conciseness", "laterality"]


def test_rho_with_ties_is_scipys_spearman_and_the_interval_holds_it():
    rng = np.random.default_rng(3)
    judge = rng.integers(1, 6, size=(12, 3)).astype(float)
    expert = np.clip(judge + rng.integers(-1, 2, size=judge.shape), 1, 5)
    result = _rank(_cases(judge.tolist(), expert.tolist(), ["pancreas"] * 12))
    assert result["rho"] == pytest.approx(stats.spearmanr(judge.ravel(), expert.ravel()).statistic)
    assert -1 <= result["ci_low"] <= result["rho"] <= result["ci_high"] <= 1
    assert result == _rank(_cases(judge.tolist(), expert.tolist(), ["pancreas"] * 12))  # seeded


def test_constant_expert_scores_leave_rho_undefined_not_zero():
    result = _rank(_cases([[1.0, 4.0], [2.0, 5.0]], [[3, 3], [3, 3]], ["duodenum"] * 2))
    assert result["rho"] is None and result["ci_low"] is None and result["n_answers"] == 4
    assert math.isnan(spearman_rows(np.array([[1.0, 2.0]]), np.array([[3.0, 3.0]]))[0])


def _pref(structure: str, judge: dict[str, float], preferred: set[str]) -> RatedCase:
    return RatedCase(structure, judge, dict.fromkeys(judge, 3.0), frozenset(preferred))


PREFERENCE_CASES = [
    _pref("duodenum", {"base": 1, "sft": 4, "dpo": 3}, {"sft"}),  # the judge's top is the expert's: agree
    _pref("duodenum", {"base": 1, "sft": 2, "dpo": 3}, {"sft", "dpo"}),  # top among the expert's two: agree
    _pref("pancreas", {"base": 1, "sft": 4, "dpo": 4}, {"sft"}),  # judge ties sft and dpo, expert not dpo: disagree
    _pref("pancreas", {"base": 5, "sft": 1, "dpo": 1}, set()),  # no expert preference: left out
    _pref("pancreas", {"base": 5, "sft": 1, "dpo": 2}, {"sft"}),  # disagree
]


def test_preferred_model_agreement_overall_and_per_structure():
    result = judge_expert_agreement(PREFERENCE_CASES, [], seed=0)["preferred"]
    overall = result["overall"]
    assert (overall["agree"], overall["n_cases"], overall["rate"]) == (2, 4, 0.5)
    # Wilson interval for 2 of 4 at 95 %: (p + z²/2n ± z·sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n), z = 1.95996
    assert (overall["ci_low"], overall["ci_high"]) == pytest.approx((0.1500, 0.8500), abs=1e-3)
    per = {s: (r["agree"], r["n_cases"], r["rate"]) for s, r in result["per_structure"].items()}
    assert per == {"duodenum": (2, 2, 1.0), "pancreas": (0, 2, 0.0)}
    assert preference_agreement(PREFERENCE_CASES[3:4]) == {"agree": 0, "n_cases": 0, "rate": None,
                                                           "ci_low": None, "ci_high": None}


def test_report_table_states_rho_interval_counts_and_the_unmatched_criteria():
    cases = _cases([[1.0, 2.0], [3.0, 4.0]], [[1, 3], [2, 4]], ["duodenum", "pancreas"])
    cases = [RatedCase(c.structure, c.judge, c.expert, frozenset({"sft"})) for c in cases]
    agreement = judge_expert_agreement(cases, ["clinical", "conciseness"], seed=0)
    header, rows = agreement_table(agreement)
    assert header[-1] == "Agreement [95% CI]"
    overall = rows[0]
    assert overall[:3] == ["Expert score vs judge composite: Spearman ρ", "all", "2 (4 answers)"]
    assert overall[3].startswith("0.80 [")
    assert ["Expert score vs judge composite: Spearman ρ", "duodenum", "1 (2 answers)", "1.00"] in rows
    preferred = [r for r in rows if r[0].startswith("Preferred model")]
    assert [r[1:3] for r in preferred] == [["all", "2"], ["duodenum", "1"], ["pancreas", "1"]]
    assert preferred[0][3].startswith("2 of 2 (100%) [")
    assert "not compared: clinical, conciseness." in agreement_notes(agreement)[-1]
