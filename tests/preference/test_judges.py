"""The pair judges: the offline rubric over real registry text, and Gemini's text-only request."""

from __future__ import annotations

from dataclasses import replace

import pytest

from cme_vlm.anatomy import Anatomy
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
    judge = GeminiPairJudge(client=None, model="gemini-2.5-flash", anatomy=Anatomy(cfg.anatomy)).for_record(record)
    request = judge.request(CTX, ["first answer", "second answer"])
    assert request.purpose == "pair_selection" and request.masks == ()
    assert set(request.fields) == {"structure", "side", "phase", "prompt", "reference", "candidates"}
    assert "[1] first answer\n[2] second answer" == request.fields["candidates"]
    assert "upper left" not in request.user_text()  # the geometry stays local
    PrivacyGuard().check(request)
    with pytest.raises(ConfigError, match="preference.judge=rubric"):
        make_pair_judge(replace(cfg, preference=replace(cfg.preference, judge=JudgeBackend.gemini)))


def test_gemini_pair_judge_through_the_fake_endpoint(cfg, tmp_path, monkeypatch) -> None:
    import json
    import re

    from fake_gemini import FakeGemini

    from cme_vlm.preference.selection import select_pair
    from cme_vlm.teacher.gemini import GeminiClient

    def by_content(body: dict) -> dict:
        text = json.dumps(body)
        options = re.findall(r"\[(\d)\] ([^\[\\]+)", text)
        good = next(int(i) for i, t in options if "inferior mesenteric vein" in t)
        bad = next(int(i) for i, t in options if "mesentery" in t.lower() and "vein" not in t)
        return {"accepted": good, "rejected": bad, "reason": "names the right vessel"}

    monkeypatch.setenv("CME_TEST_KEY", "test-key-not-a-secret-1234567890")
    g = replace(cfg.teacher.gemini, api_key_env="CME_TEST_KEY", timeout_s=2.0, requests_per_minute=0)
    pref = replace(cfg.preference, two_pass=True)
    with FakeGemini(answer=by_content) as fake:
        client = GeminiClient(replace(g, base_url=fake.url), tmp_path / "journal.jsonl", tmp_path / "audit.jsonl")
        judge = GeminiPairJudge(client, g.model, Anatomy(cfg.anatomy)).for_record(RecordContext("r1", "P07", "frame_0012.png"))
        sel = select_pair(judge, CTX, ["This is the mesentery.", "A vessel."], pref, "r1")
        assert sel.ok and sel.accepted == GT and sel.rejected == "This is the mesentery."
        assert len(fake.calls) == 2  # two orders, one request each
        select_pair(judge, CTX, ["This is the mesentery.", "A vessel."], pref, "r1")
        assert len(fake.calls) == 2  # the journal answers repeats; nothing is paid twice
    audit = (tmp_path / "audit.jsonl").read_text()
    assert "pair_selection" in audit and "P07" not in audit and "frame_0012" not in audit


def test_gemini_pair_judge_keeps_a_record_out_only_for_a_final_failure(cfg, tmp_path, monkeypatch) -> None:
    from fake_gemini import FakeGemini, Fault

    from cme_vlm.teacher.gemini import GeminiClient, TeacherFailure

    monkeypatch.setenv("CME_TEST_KEY", "test-key-not-a-secret-1234567890")
    g = replace(cfg.teacher.gemini, api_key_env="CME_TEST_KEY", timeout_s=2.0, requests_per_minute=0, max_retries=1,
                backoff_base_s=0.01, backoff_max_s=0.02)
    options = ["This is the mesentery.", GT]
    with FakeGemini(answer=lambda body: {"accepted": 2, "rejected": 1, "reason": "names the vein"}) as fake:
        client = GeminiClient(replace(g, base_url=fake.url), tmp_path / "journal.jsonl", tmp_path / "audit.jsonl")
        judge = GeminiPairJudge(client, g.model, Anatomy(cfg.anatomy)).for_record(RecordContext("r1", "P07", "frame_0012.png"))
        fake.queue(Fault.blocked())
        verdict = judge.choose(CTX, options)
        assert verdict.accepted is None and verdict.reason == "no verdict from gemini-2.5-flash: blocked:SAFETY (final)"
        fake.queue(Fault.status(503), Fault.reset())
        with pytest.raises(TeacherFailure, match="a re-run asks again"):  # the stage stops; nothing kept out
            judge.choose(CTX, options[::-1])
        assert judge.choose(CTX, options[::-1]).reason == "names the vein"  # asked again, now answered
