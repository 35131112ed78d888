"""The Gemini judge through the teacher's real guarded client, against the fake endpoint on 127.0.0.1."""

from __future__ import annotations

import json

import pytest
from fake_gemini import FakeGemini

from cme_vlm import atomic
from cme_vlm.schema import JudgeBackend
from cme_vlm.scoring.judge import JUDGE_AUDIT, JUDGE_JOURNAL, JudgeCase, make_judge

VERDICT = {"identification": 5, "position": 4, "significance": 3, "clinical": 4, "conciseness": 5,
           "explanation": "Names the vein; the significance is thin."}


@pytest.fixture
def judge_cfg(cfg, monkeypatch):
    monkeypatch.setenv("CME_TEST_JUDGE_KEY", "test-key-not-a-secret-0987654321")
    g = cfg.teacher.gemini
    g.api_key_env, g.timeout_s, g.max_retries, g.requests_per_minute = "CME_TEST_JUDGE_KEY", 2.0, 2, 0
    g.backoff_base_s, g.backoff_max_s = 0.01, 0.05
    return cfg


def test_gemini_judge_round_trip_is_text_only_journalled_and_audited(judge_cfg, answered_records, tmp_path):
    row = answered_records(n_test=1)[0]
    case = JudgeCase.from_row(row, "The inferior mesenteric vein lies lower left. In left-sided CME it is ligated high.")
    with FakeGemini(answer=lambda body: VERDICT) as fake:
        judge_cfg.teacher.gemini.base_url = fake.url
        judge = make_judge(judge_cfg, JudgeBackend.gemini, workdir=tmp_path)
        score = judge.score(case)
        again = make_judge(judge_cfg, JudgeBackend.gemini, workdir=tmp_path).score(case)
        calls, parts = list(fake.calls), fake.inline_parts()
    w = judge_cfg.eval.judge_weights
    assert score.composite == pytest.approx((4 * w.clinical + 5 * w.conciseness) / (w.clinical + w.conciseness))
    assert score.criteria["significance"] == 3 and again == score
    assert len(calls) == 1  # the second verdict came from the journal: never paid twice
    assert parts == []  # no image, no mask
    sent = json.dumps(calls[0].body)
    assert "candidate answer" in sent.lower() and row["procedure"] not in sent and row["frame"] not in sent
    assert atomic.read_jsonl(tmp_path / JUDGE_AUDIT) and atomic.read_jsonl(tmp_path / JUDGE_JOURNAL)


def test_a_final_failure_is_a_case_without_verdict_and_a_transient_one_stops_for_a_re_run(judge_cfg, answered_records,
                                                                                          tmp_path):
    from fake_gemini import Fault

    from cme_vlm.teacher.gemini import TeacherFailure

    row = answered_records(n_test=1)[0]
    case = JudgeCase.from_row(row, "The inferior mesenteric vein.")
    with FakeGemini(answer=lambda body: {**VERDICT, "clinical": 7}) as fake:  # off the 1-5 scale on every attempt
        judge_cfg.teacher.gemini.base_url = fake.url
        score = make_judge(judge_cfg, JudgeBackend.gemini, workdir=tmp_path / "final").score(case)
        again = make_judge(judge_cfg, JudgeBackend.gemini, workdir=tmp_path / "final").score(case)
        asked = len(fake.calls)
    assert asked == judge_cfg.teacher.gemini.max_retries + 1  # retried, then final and journalled: never asked again
    assert score.criteria == {} and score.composite != score.composite  # NaN: left out of the judge's figures
    assert score.explanation == again.explanation == "no verdict: schema:clinical maximum (final)"
    with FakeGemini(answer=lambda body: VERDICT) as fake:
        judge_cfg.teacher.gemini.base_url = fake.url
        fake.queue(*[Fault.status(503)] * (judge_cfg.teacher.gemini.max_retries + 1))
        with pytest.raises(TeacherFailure, match="http:503 .*a re-run asks again"):
            make_judge(judge_cfg, JudgeBackend.gemini, workdir=tmp_path / "transient").score(case)
        assert make_judge(judge_cfg, JudgeBackend.gemini, workdir=tmp_path / "transient").score(case).composite > 0
