"""The verifiable checks of one candidate, on crafted answers against the CME registry."""

from __future__ import annotations

from dataclasses import replace

import pytest

from cme_vlm.anatomy import Anatomy
from cme_vlm.preference.checks import CHECK_NAMES, CandidateChecker, CandidateChecks, checks_prefer


@pytest.fixture(scope="module")
def checker(tiny_cfg) -> CandidateChecker:
    return CandidateChecker(Anatomy(tiny_cfg.anatomy), min_words=6, max_words=30)


def _failed(checks: CandidateChecks) -> set[str]:
    return {name for name, ok in checks.as_dict().items() if not ok}


@pytest.mark.parametrize(
    ("answer", "side", "failed"),
    [
        ("The highlighted structure is the IMV, ligated at its origin in left-sided CME.", "left", set()),
        ("The highlighted vessel is the inferior mesenteric vein; it drains the left colon.", "left", set()),
        ("This is the mesentery of the colon, which carries the vessels.", "left",
         {"names_structure", "claims_no_other"}),
        ("The highlighted structure is the pancreas, lying beside the inferior mesenteric vein.", "left",
         {"claims_no_other"}),
        ("The highlighted structure is the IMV, a landmark of right-sided CME.", "left", {"side_consistent"}),
        ("The highlighted structure is the IMV, a landmark of right-sided CME.", "both", set()),
        ("The IMV.", "left", {"length_in_band"}),
        ("The highlighted structure is the IMV " + "and it runs upwards " * 8, "left", {"length_in_band"}),
    ],
)
def test_each_check_fails_exactly_where_the_answer_breaks_it(checker, answer: str, side: str, failed: set) -> None:
    assert _failed(checker.check("inferior_mesenteric_vein", side, answer)) == failed


def test_the_length_band_is_the_teachers(tiny_cfg) -> None:
    cfg = replace(tiny_cfg, teacher=replace(tiny_cfg.teacher, min_words=3, max_words=4))
    checker = CandidateChecker.from_config(cfg)
    assert checker.check("duodenum", "right", "The duodenum is highlighted.").length_in_band
    assert not checker.check("duodenum", "right", "The duodenum is highlighted here.").length_in_band
    assert not checker.check("duodenum", "right", "The duodenum.").length_in_band


def _checks(*failed: str) -> CandidateChecks:
    return CandidateChecks(**{name: name not in failed for name in CHECK_NAMES})


def test_checks_prefer_only_an_answer_that_passes_everything_the_other_passes_and_more() -> None:
    good, short, wrong = _checks(), _checks("length_in_band"), _checks("names_structure", "length_in_band")
    assert checks_prefer(good, short) is True and checks_prefer(short, good) is False
    assert checks_prefer(short, wrong) is True
    assert checks_prefer(good, _checks()) is None  # the same checks passed
    assert checks_prefer(short, _checks("side_consistent")) is None  # each fails one the other passes
    assert short.failed_where(good) == ["length_in_band"] and good.failed_where(short) == []


def test_rank_counts_checks_first_then_their_priority() -> None:
    ranked = sorted([_checks("names_structure"), _checks("length_in_band", "side_consistent"),
                     _checks("length_in_band"), _checks()], key=lambda c: c.rank, reverse=True)
    assert [_failed(c) for c in ranked] == [set(), {"length_in_band"}, {"names_structure"},
                                            {"length_in_band", "side_consistent"}]
