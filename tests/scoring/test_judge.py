"""The offline rubric judge on crafted answers, the composite weighting, and the Gemini judge's request."""

from __future__ import annotations

import numpy as np
import pytest

from cme_vlm.anatomy import Anatomy
from cme_vlm.data.geometry import mask_geometry
from cme_vlm.errors import ConfigError
from cme_vlm.schema import JudgeBackend, JudgeWeights
from cme_vlm.scoring.judge import (
    JudgeCase,
    RubricJudge,
    composite,
    make_judge,
)
from cme_vlm.scoring.rubric import repetition_rate

GOOD = (
    "The highlighted structure is the inferior mesenteric vein, seen in the lower left of the frame. "
    "In left-sided CME it is ligated high, just below the inferior border of the pancreas, leaving a stump "
    "of about one centimetre. It runs lateral to the duodenojejunal flexure on Gerota's fascia."
)


@pytest.fixture
def anatomy(cfg) -> Anatomy:
    return Anatomy(cfg.anatomy)


@pytest.fixture
def lower_left():
    mask = np.zeros((90, 90), dtype=bool)
    mask[65:85, 5:25] = True
    return mask_geometry(mask)


def case(candidate: str, geometry, side: str = "left") -> JudgeCase:
    return JudgeCase("inferior_mesenteric_vein", side, "vascular dissection", geometry, GOOD, candidate)


def judge(anatomy, weights=JudgeWeights()) -> RubricJudge:
    return RubricJudge(anatomy, weights)


def test_a_correct_answer_scores_five_on_every_criterion(anatomy, lower_left):
    s = judge(anatomy).score(case(GOOD, lower_left))
    assert s.criteria == {k: 5.0 for k in s.criteria}
    assert s.composite == pytest.approx(5.0)
    assert "names the inferior mesenteric vein first" in s.explanation


def test_wrong_structure_fails_identification_and_caps_clinical(anatomy, lower_left):
    wrong = "This is the mesentery, in the lower left of the frame. In left-sided CME it is ligated high at the pancreas."
    s = judge(anatomy).score(case(wrong, lower_left))
    assert s.criteria["identification"] == 1
    assert s.criteria["exclusivity"] == 1
    assert s.clinical <= 2.0
    assert "mesentery" in s.explanation


def test_another_structure_claimed_besides_the_target(anatomy, lower_left):
    both = GOOD + " The highlighted tissue is also the pancreas."
    s = judge(anatomy).score(case(both, lower_left))
    assert s.criteria["identification"] == 5
    assert s.criteria["exclusivity"] == 2


def test_wrong_side_is_a_laterality_error(anatomy, lower_left):
    s = judge(anatomy).score(case(GOOD.replace("left-sided", "right-sided"), lower_left))
    assert s.criteria["laterality"] == 1
    assert judge(anatomy).score(case(GOOD, lower_left, side="right")).criteria["laterality"] == 1
    assert judge(anatomy).score(case(GOOD, lower_left, side="both")).criteria["laterality"] == 5


def test_position_against_the_mask_geometry(anatomy, lower_left):
    assert judge(anatomy).score(case(GOOD.replace("lower left", "upper right"), lower_left)).criteria["position"] == 1
    assert judge(anatomy).score(case(GOOD.replace(", seen in the lower left of the frame", ""), lower_left)).criteria[
        "position"
    ] == 3


def test_registry_facts_covered(anatomy, lower_left):
    bare = "The highlighted structure is the inferior mesenteric vein, seen in the lower left of the frame."
    assert judge(anatomy).score(case(bare, lower_left)).criteria["facts"] == 1
    assert judge(anatomy).score(case(GOOD, lower_left)).criteria["facts"] == 5


def test_repetition_lowers_conciseness(anatomy, lower_left):
    loop = "The inferior mesenteric vein is here. " * 6
    assert repetition_rate(loop) > 0.5
    assert repetition_rate(GOOD) == 0.0
    s = judge(anatomy).score(case(loop, lower_left))
    assert s.criteria["conciseness"] == 1
    assert s.conciseness == 1
    assert judge(anatomy).score(case("", lower_left)).criteria["conciseness"] == 1


def test_composite_is_the_weighted_mean(anatomy, lower_left):
    assert composite(4.0, 2.0, JudgeWeights(clinical=0.7, conciseness=0.3)) == pytest.approx(3.4)
    assert composite(4.0, 2.0, JudgeWeights(clinical=3, conciseness=1)) == pytest.approx(3.5)
    loop = "The inferior mesenteric vein is in the lower left of the frame. " * 5
    for w in (JudgeWeights(1, 0), JudgeWeights(0, 1), JudgeWeights(2, 1)):
        s = judge(anatomy, w).score(case(loop, lower_left))
        expected = (w.clinical * s.clinical + w.conciseness * s.conciseness) / (w.clinical + w.conciseness)
        assert s.composite == pytest.approx(expected)
    assert judge(anatomy, JudgeWeights(1, 0)).score(case(loop, lower_left)).composite > 3
    with pytest.raises(ConfigError, match="judge_weights"):
        composite(1, 1, JudgeWeights(0, 0))


class FakeClient:
    model = "gemini-2.5-flash"

    def __init__(self, reply):
        self.reply = reply
        self.requests = []

    def generate_json(self, request, schema):
        self.requests.append((request, schema))
        return self.reply


def test_gemini_judge_sends_text_only_and_weights_the_reply(cfg, lower_left):
    reply = {"identification": 5, "position": 4, "significance": 4, "clinical": 4, "conciseness": 2,
             "explanation": "Correct vein, a little repetitive."}
    client = FakeClient(reply)
    j = make_judge(cfg, JudgeBackend.gemini, client=client)
    s = j.score(case(GOOD, lower_left))
    request, schema = client.requests[0]
    assert request.purpose == "judge" and request.masks == ()
    assert request.fields["structure"] == "inferior mesenteric vein"
    assert request.fields["candidate_answer"] == GOOD and request.fields["region"] == lower_left.describe()
    assert set(schema["required"]) >= {"clinical", "conciseness"}
    w = cfg.eval.judge_weights
    assert s.composite == pytest.approx((w.clinical * 4 + w.conciseness * 2) / (w.clinical + w.conciseness))
    assert s.judge == "gemini:gemini-2.5-flash"


def test_make_judge_defaults_to_the_config(cfg):
    assert isinstance(make_judge(cfg), RubricJudge)
    with pytest.raises(ConfigError, match="workdir"):
        make_judge(cfg, "gemini")


def test_a_fact_of_the_other_side_earns_no_credit(anatomy, lower_left):
    splenic = ("The highlighted structure is the pancreas. During splenic-flexure mobilisation the lesser sac is entered "
               "at its inferior border and the transverse mesocolon is lifted off it. Its lower border marks the level "
               "of high IMV ligation in left-sided CME.")
    for side, credit in (("left", 5), ("right", 1)):
        verdict = judge(anatomy).score(JudgeCase("pancreas", side, "mesocolic dissection", lower_left, splenic, splenic))
        assert verdict.criteria["facts"] == credit, side
