"""Pair selection: seeded order, two-pass consistency, margin rule, kept-out reasons."""

from __future__ import annotations

from dataclasses import dataclass, field

from cme_vlm.preference.selection import PairContext, Verdict, candidate_pool, order_seed, select_pair
from cme_vlm.schema import PreferenceConfig

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
