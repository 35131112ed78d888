"""Pair selection: seeded order, two-pass consistency, margin rule, kept-out reasons, and the three
selection modes (judge, filter, checks) on constructed candidates."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pytest

from cme_vlm.anatomy import Anatomy
from cme_vlm.preference.checks import CandidateChecker
from cme_vlm.preference.selection import (
    PairContext,
    Verdict,
    candidate_pool,
    judge_checks_agreement,
    order_seed,
    select_pair,
)
from cme_vlm.schema import FilterAction, PreferenceConfig, SelectionMode

CTX = PairContext("imv", "left", "vascular dissection", "What is highlighted?", "The inferior mesenteric vein.")


@dataclass
class ScoreJudge:
    """Scores each option by a fixed table, as a rubric would; records what it was shown."""

    scores: dict[str, float]
    name: str = "table"
    shown: list[list[str]] = field(default_factory=list)

    def choose(self, context: PairContext, options: list[str]) -> Verdict:
        self.shown.append(list(options))
        s = [self.scores[o] for o in options]
        best, worst = s.index(max(s)), s.index(min(s))
        return Verdict(best, worst, max(s), min(s), "by table")


@dataclass
class FirstLastJudge:
    """A judge with pure position bias: the first option wins, the last loses."""

    name: str = "biased"

    def choose(self, context: PairContext, options: list[str]) -> Verdict:
        return Verdict(0, len(options) - 1)


def test_pool_dedupes_whitespace_variants_and_adds_ground_truth() -> None:
    pool = candidate_pool(["a  b", "a b", "", "c"], "gt", include_ground_truth=True)
    assert pool == ["a  b", "c", "gt"]
    assert candidate_pool(["x", "x"], "gt", include_ground_truth=False) == ["x"]


def test_selection_picks_best_and_worst_in_a_recorded_seeded_order() -> None:
    cands = ["poor", "fair", "good"]
    judge = ScoreJudge({"poor": 1.5, "fair": 3.0, "good": 4.0, CTX.ground_truth: 4.8})
    cfg = PreferenceConfig(seed=7)
    sel = select_pair(judge, CTX, cands, cfg, "rec1")
    assert sel.ok and sel.accepted == CTX.ground_truth and sel.rejected == "poor"
    assert (sel.accepted_score, sel.rejected_score) == (4.8, 1.5)
    assert sel.order_seed == order_seed(7, "rec1")
    again = ScoreJudge(judge.scores)
    select_pair(again, CTX, cands, cfg, "rec1")
    assert again.shown == judge.shown  # the recorded seed reproduces the order
    orders = set()
    for rid in ("r1", "r2", "r3", "r4", "r5", "r6"):
        other = ScoreJudge(judge.scores)
        select_pair(other, CTX, cands, cfg, rid)
        orders.add(tuple(other.shown[0]))
    assert len(orders) > 1  # the order is shuffled per record, not fixed


def test_two_pass_keeps_out_position_biased_verdicts() -> None:
    cands = ["one", "two", "three"]
    one_pass = select_pair(FirstLastJudge(), CTX, cands, PreferenceConfig(min_margin=0.0), "r")
    assert one_pass.ok
    sel = select_pair(FirstLastJudge(), CTX, cands, PreferenceConfig(two_pass=True, min_margin=0.0), "r")
    assert not sel.ok and "inconsistent" in sel.reason
    consistent = ScoreJudge({"one": 1.0, "two": 2.0, "three": 3.0, CTX.ground_truth: 5.0})
    sel = select_pair(consistent, CTX, cands, PreferenceConfig(two_pass=True), "r")
    assert sel.ok and len(consistent.shown) == 2 and consistent.shown[1] == consistent.shown[0][::-1]


def test_records_the_judge_cannot_separate_are_kept_out_with_reason() -> None:
    tied = ScoreJudge({"a": 3.0, "b": 3.1, CTX.ground_truth: 3.2})
    sel = select_pair(tied, CTX, ["a", "b"], PreferenceConfig(min_margin=0.25), "r")
    assert not sel.ok and "min_margin" in sel.reason
    same = select_pair(ScoreJudge({"a": 3.0}), CTX, ["a", "a"], PreferenceConfig(include_ground_truth=False), "r")
    assert not same.ok and "fewer than two" in same.reason

    class Refuses:
        name = "refuses"

        def choose(self, context: PairContext, options: list[str]) -> Verdict:
            return Verdict(None, None, reason="all equally wrong")

    sel = select_pair(Refuses(), CTX, ["a", "b"], PreferenceConfig(), "r")
    assert not sel.ok and "all equally wrong" in sel.reason


# --------------------------------------------------------------------------- verifiable checks
GOOD = "The highlighted structure is the IMV in left-sided CME."
SHORT = "The IMV."  # fails only the length band
MESENTERY = "This is the mesentery of the colon."  # names no IMV and claims another structure
RIGHT = "The highlighted structure is the IMV of right-sided CME."  # fails only the side


@pytest.fixture(scope="module")
def checker(tiny_cfg) -> CandidateChecker:
    return CandidateChecker(Anatomy(tiny_cfg.anatomy), min_words=3, max_words=30)


def _mode(selection: str, action: str = "drop", **kw) -> PreferenceConfig:
    return PreferenceConfig(selection=SelectionMode(selection), filter_action=FilterAction(action), **kw)


def test_judge_mode_picks_exactly_what_it_picked_without_checks(checker) -> None:
    cands = [GOOD, SHORT, MESENTERY, RIGHT]
    scores = {GOOD: 2.0, SHORT: 4.0, MESENTERY: 4.5, RIGHT: 1.0, CTX.ground_truth: 3.0}
    for rid in ("r1", "r2", "r3", "r4"):
        plain, checked = ScoreJudge(scores), ScoreJudge(scores)
        before = select_pair(plain, CTX, cands, PreferenceConfig(), rid)
        after = select_pair(checked, CTX, cands, PreferenceConfig(), rid, checker)
        assert plain.shown == checked.shown
        fields = ("accepted", "rejected", "accepted_score", "rejected_score", "order_seed", "reason", "decided_by")
        assert [getattr(after, f) for f in fields] == [getattr(before, f) for f in fields]
        assert before.accepted_checks is None and before.judge_agrees is None
        assert after.accepted == MESENTERY and after.rejected == RIGHT and after.decided_by == "judge"
        assert not after.accepted_checks.names_structure and not after.rejected_checks.side_consistent
        assert after.judge_agrees is None  # each fails a check the other passes


def test_filter_drops_or_flips_a_pair_whose_accepted_answer_fails_a_check_the_rejected_passes(checker) -> None:
    judge = ScoreJudge({MESENTERY: 4.0, GOOD: 1.0})
    dropped = select_pair(judge, CTX, [MESENTERY, GOOD], _mode("filter", include_ground_truth=False), "r", checker)
    assert not dropped.ok and dropped.decided_by == "checks"
    assert "veto" in dropped.reason and "names_structure, claims_no_other" in dropped.reason
    assert dropped.judge_agrees is False

    flipped = select_pair(judge, CTX, [MESENTERY, GOOD], _mode("filter", "flip", include_ground_truth=False), "r",
                          checker)
    assert flipped.ok and (flipped.accepted, flipped.rejected) == (GOOD, MESENTERY)
    assert (flipped.accepted_score, flipped.rejected_score) == (1.0, 4.0)  # the judge's scores follow the texts
    assert flipped.decided_by == "checks" and flipped.judge_agrees is False
    assert flipped.accepted_checks.names_structure and not flipped.rejected_checks.names_structure


def test_filter_keeps_pairs_the_checks_do_not_contradict_and_drops_conflicts_even_when_flipping(checker) -> None:
    agreeing = ScoreJudge({GOOD: 4.0, MESENTERY: 1.0})
    kept = select_pair(agreeing, CTX, [GOOD, MESENTERY], _mode("filter", "flip", include_ground_truth=False), "r",
                       checker)
    assert kept.ok and (kept.accepted, kept.rejected) == (GOOD, MESENTERY)
    assert kept.decided_by == "judge" and kept.judge_agrees is True

    conflict = ScoreJudge({SHORT: 4.0, RIGHT: 1.0})  # short fails the length, right the side: flipping won't help
    sel = select_pair(conflict, CTX, [SHORT, RIGHT], _mode("filter", "flip", include_ground_truth=False), "r", checker)
    assert not sel.ok and "length_in_band" in sel.reason and sel.judge_agrees is None


def test_checks_mode_asks_no_judge_and_breaks_ties_by_the_seeded_order(checker) -> None:
    cands = [SHORT, MESENTERY, GOOD, RIGHT]  # GOOD and the ground truth pass every check
    firsts = set()
    for rid in ("r1", "r2", "r3", "r4", "r5", "r6"):
        shown = ScoreJudge({c: 1.0 for c in [*cands, CTX.ground_truth]})
        select_pair(shown, CTX, cands, PreferenceConfig(), rid)  # records the order a judge is shown
        sel = select_pair(None, CTX, cands, _mode("checks"), rid, checker)
        first = next(t for t in shown.shown[0] if t in (GOOD, CTX.ground_truth))
        assert sel.ok and sel.accepted == first and sel.rejected == MESENTERY and sel.decided_by == "checks"
        assert math.isnan(sel.accepted_score) and sel.judge_agrees is None
        assert select_pair(None, CTX, cands, _mode("checks"), rid, checker) == sel  # reproducible
        firsts.add(first)
    assert firsts == {GOOD, CTX.ground_truth}  # the tie goes either way across records, not always one

    tied = select_pair(None, CTX, [GOOD], _mode("checks"), "r", checker)
    assert not tied.ok and "checks cannot separate" in tied.reason and tied.decided_by == "checks"
    alone = select_pair(None, CTX, [GOOD], _mode("checks", include_ground_truth=False), "r", checker)
    assert not alone.ok and "fewer than two" in alone.reason and alone.decided_by == "checks"


def test_modes_that_use_checks_refuse_to_run_without_a_checker() -> None:
    with pytest.raises(ValueError, match="selection=filter"):
        select_pair(ScoreJudge({}), CTX, [GOOD, SHORT], _mode("filter"), "r")
    with pytest.raises(ValueError, match="selection=judge"):
        select_pair(None, CTX, [GOOD, SHORT], PreferenceConfig(), "r")


def test_agreement_counts_only_records_where_both_prefer_an_answer() -> None:
    assert judge_checks_agreement([True, False, None, True, None]) == {"rate": 2 / 3, "records": 3, "agree": 2}
    assert judge_checks_agreement([None, None]) == {"rate": None, "records": 0, "agree": 0}
