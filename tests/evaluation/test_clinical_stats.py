"""Clinical checks and paired statistics on crafted answers and scores."""

from __future__ import annotations

import pytest
from scipy import stats as scipy_stats

from cme_vlm.anatomy import Anatomy
from cme_vlm.evaluation.stats import by_structure, pairwise_tests, wilcoxon
from cme_vlm.scoring.clinical import collapse, identification_hits, laterality_errors


@pytest.fixture
def anatomy(cfg) -> Anatomy:
    return Anatomy(cfg.anatomy)


def test_identification_accuracy(anatomy):
    answers = ["This is the IMV near the pancreas.", "The pancreas lies here.", "Nothing to see.", "Angel's hair."]
    targets = ["inferior_mesenteric_vein", "duodenum", "pancreas", "angels_hair"]
    assert identification_hits(anatomy, answers, targets) == [True, False, False, True]


def test_laterality_errors_flag_the_other_side_only():
    answers = ["In right-sided CME the duodenum...", "In left-sided CME...", "No side named.", "A right colectomy."]
    assert laterality_errors(answers, ["left", "left", "left", "both"]) == [True, False, False, False]


def test_collapse_finds_the_one_answer_for_everything(anatomy):
    targets = ["pancreas", "duodenum", "angels_hair", "preparation_plane"]
    base = ["This is the mesentery."] * 3 + ["The pancreas."]
    c = collapse(anatomy, base, targets)
    assert (c.share, c.most_common, c.target_share, c.n) == (0.75, "mesentery", 0.25, 4)
    diverse = ["The pancreas.", "The duodenum.", "Angel's hair.", "The preparation plane."]
    assert collapse(anatomy, diverse, targets).share == 0.25
    assert collapse(anatomy, [], []).n == 0


def test_wilcoxon_matches_scipy_and_says_who_is_better():
    sft = [4.0, 3.5, 4.2, 3.9, 4.8, 4.1, 3.7, 4.4]
    base = [1.5, 2.0, 1.0, 2.2, 1.8, 1.1, 1.6, 2.4]
    t = wilcoxon("sft", sft, "base", base, "judge")
    ref = scipy_stats.wilcoxon(sft, base)
    assert t.p_value == pytest.approx(ref.pvalue) and t.n == 8
    assert t.p_value < 0.05 and t.median_diff > 0
    assert "sft is significantly better than base" in t.verdict()
    mostly_ties = wilcoxon("dpo", [2.0] * 10 + [1.0] * 8, "sft", [2.0] * 10 + [3.0] * 8, "bleu")
    assert mostly_ties.median_diff == 0 and "sft is significantly better than dpo" in mostly_ties.verdict()
    same = wilcoxon("a", [1.0, 2.0], "b", [1.0, 2.0], "bleu")
    assert same.n == 2 and "no difference" in same.verdict()
    with pytest.raises(ValueError, match="same answers"):
        wilcoxon("a", [1.0], "b", [1.0, 2.0], "bleu")


def test_pairwise_tests_cover_every_pair_and_skip_nan():
    scores = {"base": [1.0, 2.0, float("nan")], "sft": [3.0, 4.0, 5.0], "dpo": [3.0, 4.5, 5.0]}
    tests = pairwise_tests(scores, "judge")
    assert [(t.a, t.b) for t in tests] == [("base", "sft"), ("base", "dpo"), ("sft", "dpo")]
    assert tests[0].n == 2 and tests[2].n == 3


def test_by_structure_groups_in_first_seen_order():
    out = by_structure(["imv", "pancreas", "imv"], [1.0, 5.0, 3.0])
    assert list(out) == ["imv", "pancreas"]
    assert (out["imv"].mean, out["imv"].std, out["pancreas"].n) == (2.0, 1.0, 1)
