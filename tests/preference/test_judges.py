"""The pair judges: the offline rubric over real registry text, and Gemini's text-only request."""

from __future__ import annotations

from dataclasses import replace

import pytest

from cme_vlm.errors import ConfigError
from cme_vlm.preference.judges import GeminiPairJudge, make_pair_judge
from cme_vlm.preference.selection import PairContext
from cme_vlm.schema import JudgeBackend
from cme_vlm.teacher.privacy import PrivacyGuard
from cme_vlm.teacher.request import RecordContext

GT = (
    "The highlighted structure is the inferior mesenteric vein, which runs lateral to the duodenojejunal "
    "flexure on Gerota's fascia during left-sided CME; high ligation below the pancreas gives the colon reach."
)
CTX = PairContext("inferior_mesenteric_vein", "left", "vascular dissection", "What is highlighted?", GT, "upper left")


def test_rubric_pair_judge_prefers_the_right_structure(cfg) -> None:
    judge = make_pair_judge(cfg)
    options = ["This is the mesentery.", GT, "The duodenum on the right side."]
    verdict = judge.choose(CTX, options)
    assert options[verdict.accepted] == GT
    assert options[verdict.rejected] != GT
    assert verdict.accepted_score > verdict.rejected_score
    tie = judge.choose(CTX, ["This is the mesentery.", "This is the mesentery!"])
    assert tie.accepted is None and "score" in tie.reason


def test_gemini_pair_request_is_text_only_and_passes_the_guard(cfg) -> None:
    record = RecordContext("r1", "P07", "frame_0012.png")
    judge = GeminiPairJudge(client=None, model="gemini-2.5-flash").for_record(record)
    request = judge.request(CTX, ["first answer", "second answer"])
    assert request.purpose == "pair_selection" and request.masks == ()
    assert set(request.fields) == {"structure", "side", "phase", "prompt", "reference", "candidates"}
    assert "[1] first answer\n[2] second answer" == request.fields["candidates"]
    assert "upper left" not in request.user_text()  # the geometry stays local
    PrivacyGuard().check(request)
    with pytest.raises(ConfigError, match="preference.judge=rubric"):
        make_pair_judge(replace(cfg, preference=replace(cfg.preference, judge=JudgeBackend.gemini)))
