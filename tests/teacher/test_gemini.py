"""The real ``google-genai`` client against a fake Gemini endpoint on 127.0.0.1."""

from __future__ import annotations

import io
import json
import time

import numpy as np
import pytest
from fake_gemini import FakeGemini, Fault, audited_requests

from cme_vlm import atomic
from cme_vlm.data.records import load_dataset
from cme_vlm.errors import TeacherError
from cme_vlm.scoring.judge import JUDGE_SCHEMA
from cme_vlm.teacher.backend import ANSWER_SCHEMA
from cme_vlm.teacher.cache import Journal
from cme_vlm.teacher.gemini import GeminiClient, TeacherFailure
from cme_vlm.teacher.stage import answer

from .conftest import KEY, make_records


def _masks_of(ds) -> dict[bytes, str]:
    from cme_vlm.teacher.request import encode_mask, mask_array

    return {encode_mask(mask_array(r["mask"])): r["id"] for r in ds}


def test_sent_json_holds_only_masks_text_and_key_in_header(records_dir, gemini_cfg, tmp_path):
    from PIL import Image

    with FakeGemini() as fake:
        gemini_cfg.teacher.gemini.base_url = fake.url
        answer(gemini_cfg, records_dir, tmp_path / "02-teacher")
    ds = load_dataset(records_dir)
    masks = _masks_of(ds)
    assert len(fake.calls) == len(ds)
    sent_ids = []
    for call in fake.calls:
        assert call.path.endswith("models/gemini-2.5-flash:generateContent")
        assert call.headers.get("x-goog-api-key") == KEY
        body = json.dumps(call.body)
        assert KEY not in body and KEY not in call.path
        assert "proc0" not in body and "frame0" not in body and ".png" not in body
        parts = [p for c in call.body["contents"] for p in c["parts"]]
        images = [p for p in parts if "inlineData" in p]
        assert len(images) == 1 and images[0]["inlineData"].get("mimeType", images[0]["inlineData"].get("mime_type")) == "image/png", images[0]["inlineData"].keys()
        assert call.body["generationConfig"]["responseMimeType"] == "application/json"
        assert "responseJsonSchema" in call.body["generationConfig"]
    for data in fake.inline_parts():
        image = Image.open(io.BytesIO(data))
        assert image.mode == "1"  # one channel, one bit: no frame pixels can hide in it
        sent_ids.append(masks[data])  # KeyError if it is not exactly one record's mask encoding
        frame = np.asarray(ds[[r for r in ds["id"]].index(masks[data])]["overlay"])
        assert np.asarray(image).shape == frame.shape[:2]
        assert set(np.unique(np.asarray(image, dtype=np.uint8))) <= {0, 1}
    assert sorted(sent_ids) == sorted(ds["id"])
    answered = load_dataset(tmp_path / "02-teacher")
    assert all(p == "teacher" for p in answered["provenance"])
    assert all(a.startswith("The highlighted structure is the") for a in answered["answer"])


TRANSIENT = [Fault.status(429, retry_after="0.2"), Fault.status(500), Fault.status(503), Fault.hang(0.6), Fault.reset(),
             Fault.truncated(), Fault.not_json(), Fault.empty(), Fault.no_text()]


def _request(records_dir, cfg, i: int = 0):
    from cme_vlm.anatomy import Anatomy
    from cme_vlm.teacher.request import build_teacher_request

    return build_teacher_request(load_dataset(records_dir)[i], Anatomy(cfg.anatomy)).outgoing(45, 110)


def test_transient_faults_are_retried_and_never_journalled(records_dir, gemini_cfg, tmp_path):
    request = _request(records_dir, gemini_cfg)
    g = gemini_cfg.teacher.gemini
    g.timeout_s, g.backoff_max_s = 0.3, 1.0  # room for a 0.2 s Retry-After to show
    for fault in TRANSIENT:
        journal, audit = tmp_path / fault.kind / f"j{fault.code}.jsonl", tmp_path / fault.kind / f"a{fault.code}.jsonl"
        with FakeGemini() as fake:
            g.base_url, g.max_retries = fake.url, 0
            fake.queue(fault)
            with pytest.raises(TeacherFailure, match="transient, out of retries") as failure:
                GeminiClient(g, journal, audit).generate_json(request, ANSWER_SCHEMA)  # the fault is the outcome
            assert not failure.value.failure.final and len(Journal(journal)) == 0, fault
            g.max_retries = 1
            fake.queue(fault)
            start = time.monotonic()
            data = GeminiClient(g, journal, audit).generate_json(request, ANSWER_SCHEMA)
            waited = time.monotonic() - start
        assert data["answer"].startswith("The highlighted structure"), fault
        assert len(fake.calls) == 3 and len(fake.answered) == 1 and len(Journal(journal)) == 1, fault
        assert len(audited_requests(audit)) == 3, fault  # every attempt audited, in two sections
        assert sum("section" in line for line in atomic.read_jsonl(audit)) == 2, fault
        assert waited >= 0.2 or not fault.retry_after, fault  # the back-off alone would be about 0.01 s


def test_faults_across_a_run_are_retried_or_final_never_answers(records_dir, gemini_cfg, tmp_path):
    gemini_cfg.teacher.max_failure_fraction = 0.5
    g = gemini_cfg.teacher.gemini
    g.concurrency = 1  # the queue meets the records in order
    g.max_retries = len(TRANSIENT)  # record 0 rides out every transient fault
    g.timeout_s = 0.3
    with FakeGemini() as fake:
        g.base_url = fake.url
        fake.queue(*TRANSIENT, None, Fault.off_schema(sticky=True), Fault.blocked(), Fault.prompt_blocked())
        answer(gemini_cfg, records_dir, tmp_path / "t")
        schema_attempts = sum(c.fault == Fault.off_schema(sticky=True) for c in fake.calls)
    assert schema_attempts == g.max_retries + 1  # an answer off the schema is asked again until the retries run out
    summary = json.loads((tmp_path / "t" / "summary.json").read_text())
    assert summary["failed_by_reason"] == {"blocked:SAFETY": 2, "schema:not_json": 1}
    assert summary["answered"] == 7
    ds = load_dataset(tmp_path / "t")
    failed = [r for r in ds if r["provenance"] == ""]
    assert len(failed) == 3 and all(r["answer"] == "" for r in failed)
    assert all(r["answer"].startswith("The highlighted") for r in ds if r["provenance"] == "teacher")
    assert len(Journal(tmp_path / "t" / "journal.jsonl")) == 10  # answers and final failures
    with FakeGemini() as fake:
        g.base_url = fake.url
        answer(gemini_cfg, records_dir, tmp_path / "t")
    assert fake.calls == []  # a re-run asks nothing: every record has a final outcome


def test_final_failures_over_the_limit_say_a_re_run_changes_nothing(records_dir, gemini_cfg, tmp_path):
    with FakeGemini() as fake:
        gemini_cfg.teacher.gemini.base_url = fake.url
        fake.queue(*[Fault.blocked()] * 3)
        with pytest.raises(TeacherError, match=r"will not ask for them again.*teacher.max_failure_fraction=0.3 and re-run"):
            answer(gemini_cfg, records_dir, tmp_path / "t")
        sent = len(fake.calls)
        gemini_cfg.teacher.max_failure_fraction = 0.3
        answer(gemini_cfg, records_dir, tmp_path / "t")  # goes on past the three, as the message says
    assert sent == 10 and len(fake.calls) == sent


def test_transient_faults_out_of_retries_stop_the_stage_and_a_re_run_asks_only_them(records_dir, gemini_cfg, tmp_path):
    gemini_cfg.teacher.max_failure_fraction = 0.2
    g = gemini_cfg.teacher.gemini
    g.concurrency = 1
    with FakeGemini() as fake:
        g.base_url = fake.url
        fake.queue(*[Fault.status(503)] * (g.max_retries + 1), Fault.blocked())
        message = r"1 teacher request\(s\) got no answer.*http:503.*ask only these again\. Besides, 1 record"
        with pytest.raises(TeacherError, match=message):
            answer(gemini_cfg, records_dir, tmp_path / "t")
        first = len(fake.calls)
        answer(gemini_cfg, records_dir, tmp_path / "t")
        again = fake.calls[first:]
    assert len(again) == 1 and again[0].digest == fake.calls[0].digest
    summary = json.loads((tmp_path / "t" / "summary.json").read_text())
    assert summary["answered"] == 9 and summary["failed_by_reason"] == {"blocked:SAFETY": 1}


@pytest.mark.parametrize("code, message", [(401, "API key in CME_TEST_GEMINI_KEY was rejected"),
                                           (400, "request is invalid for model"), (404, "was not found")])
def test_a_status_no_retry_can_fix_stops_the_stage_at_once(records_dir, gemini_cfg, tmp_path, code, message):
    gemini_cfg.teacher.gemini.concurrency = 1
    with FakeGemini() as fake:
        gemini_cfg.teacher.gemini.base_url = fake.url
        fake.queue(Fault.status(code))
        with pytest.raises(TeacherError, match=f"answered {code} .*no retry can fix.*{message}"):
            answer(gemini_cfg, records_dir, tmp_path / "t")
    assert len(fake.calls) == 1
    assert len(Journal(tmp_path / "t" / "journal.jsonl")) == 0


def test_resume_after_interruption_sends_nothing_twice(tmp_path, gemini_cfg):
    from cme_vlm.data.records import save_dataset

    full = make_records(8)
    save_dataset(full.select(range(5)), tmp_path / "part")
    save_dataset(full, tmp_path / "full")
    with FakeGemini() as fake:
        gemini_cfg.teacher.gemini.base_url = fake.url
        answer(gemini_cfg, tmp_path / "part", tmp_path / "t")  # the run that was cut short
        answer(gemini_cfg, tmp_path / "full", tmp_path / "t")
        answer(gemini_cfg, tmp_path / "full", tmp_path / "t")
    assert len(fake.calls) == 8
    assert max(fake.answered.values()) == 1
    summary = json.loads((tmp_path / "t" / "summary.json").read_text())
    assert summary["cached"] == 8 and summary["answered"] == 8


def test_missing_key_is_a_clear_error(gemini_cfg, tmp_path, monkeypatch, records_dir):
    monkeypatch.delenv("CME_TEST_GEMINI_KEY")
    with pytest.raises(TeacherError, match="CME_TEST_GEMINI_KEY"):
        answer(gemini_cfg, records_dir, tmp_path / "t")


VERDICT = {"identification": 5, "position": 4, "significance": 3, "clinical": 4, "conciseness": 5, "explanation": "ok"}


@pytest.mark.parametrize("text, finish, schema, reason", [
    ('{"answer": "The duodenum."}', "STOP", ANSWER_SCHEMA, None),
    ('{"reply": "The duodenum."}', "STOP", ANSWER_SCHEMA, "schema:answer required"),
    ('{"answer": 3}', "STOP", ANSWER_SCHEMA, "schema:answer type"),
    ('["The duodenum."]', "STOP", ANSWER_SCHEMA, "schema:answer type"),
    ('{"answer": "The duo', "MAX_TOKENS", ANSWER_SCHEMA, "schema:MAX_TOKENS"),
    ("", "RECITATION", ANSWER_SCHEMA, "blocked:RECITATION"),
    (json.dumps({**VERDICT, "clinical": 7}), "STOP", JUDGE_SCHEMA, "schema:clinical maximum"),
    (json.dumps(VERDICT), "STOP", JUDGE_SCHEMA, None),
])
def test_a_response_is_an_answer_only_when_it_meets_the_whole_schema(text, finish, schema, reason):
    from google.genai import types

    from cme_vlm.teacher.gemini import parse_response

    content = types.Content(role="model", parts=[types.Part(text=text)] if text else [])
    response = types.GenerateContentResponse(candidates=[types.Candidate(content=content, finish_reason=finish)])
    data, failure = parse_response(response, schema)
    assert (failure.reason if failure else None) == reason and (data is None) == (reason is not None)
