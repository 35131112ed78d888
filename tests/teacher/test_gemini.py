"""The real ``google-genai`` client against a fake Gemini endpoint on 127.0.0.1."""

from __future__ import annotations

import io
import json
import time

import numpy as np
import pytest
from fake_gemini import Fault, FakeGemini

from cme_vlm.data.records import load_dataset
from cme_vlm.errors import TeacherError
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


@pytest.mark.parametrize(
    "fault, sent",
    [(Fault.status(429, retry_after="0.2"), 2), (Fault.status(500), 2), (Fault.status(503), 2)],
)
def test_transient_errors_are_retried(records_dir, gemini_cfg, tmp_path, fault, sent):
    from cme_vlm.anatomy import Anatomy
    from cme_vlm.teacher.request import build_teacher_request

    request = build_teacher_request(load_dataset(records_dir)[0], Anatomy(gemini_cfg.anatomy)).outgoing(45, 110)
    with FakeGemini() as fake:
        gemini_cfg.teacher.gemini.base_url = fake.url
        gemini_cfg.teacher.gemini.backoff_max_s = 1.0  # room for the 0.2 s Retry-After to show
        client = GeminiClient(gemini_cfg.teacher.gemini, tmp_path / "j.jsonl", tmp_path / "a.jsonl")
        fake.queue(fault)
        start = time.monotonic()
        data = client.generate_json(request, ANSWER_SCHEMA)
        waited = time.monotonic() - start
    assert data["answer"].startswith("The highlighted structure")
    assert len(fake.calls) == sent
    assert len((tmp_path / "a.jsonl").read_text().splitlines()) == sent  # every attempt audited
    if fault.retry_after:
        assert waited >= 0.2  # the back-off alone would be about 0.01 s


def test_faults_across_a_run_are_retried_or_recorded_never_answers(records_dir, gemini_cfg, tmp_path):
    gemini_cfg.teacher.max_failure_fraction = 0.5
    gemini_cfg.teacher.gemini.concurrency = 1  # the queue meets the records in order
    gemini_cfg.teacher.gemini.max_retries = 6  # record 0 rides out the four transient faults
    with FakeGemini() as fake:
        gemini_cfg.teacher.gemini.base_url = fake.url
        gemini_cfg.teacher.gemini.timeout_s = 0.3
        fake.queue(Fault.status(429, retry_after="0.01"), Fault.status(500), Fault.status(503), Fault.delay(1.0),
                   Fault.malformed(), Fault.blocked(), Fault.empty(), Fault.prompt_blocked())
        answer(gemini_cfg, records_dir, tmp_path / "t")
    summary = json.loads((tmp_path / "t" / "summary.json").read_text())
    assert summary["failed_by_reason"] == {"blocked:SAFETY": 2, "empty": 1, "malformed": 1}
    assert summary["answered"] == 6
    ds = load_dataset(tmp_path / "t")
    failed = [r for r in ds if r["provenance"] == ""]
    assert len(failed) == 4 and all(r["answer"] == "" for r in failed)
    assert all(r["answer"].startswith("The highlighted") for r in ds if r["provenance"] == "teacher")
    journal = Journal(tmp_path / "t" / "journal.jsonl")
    assert len(journal) == 10  # answers and final failures; nothing transient


def test_too_many_failures_exit_non_zero(records_dir, gemini_cfg, tmp_path):
    with FakeGemini() as fake:
        gemini_cfg.teacher.gemini.base_url = fake.url
        fake.queue(*[Fault.blocked()] * 3)
        with pytest.raises(TeacherError, match="max_failure_fraction"):
            answer(gemini_cfg, records_dir, tmp_path / "t")


def test_out_of_retries_is_a_failure_not_an_answer(records_dir, gemini_cfg, tmp_path):
    from cme_vlm.anatomy import Anatomy
    from cme_vlm.teacher.request import build_teacher_request

    request = build_teacher_request(load_dataset(records_dir)[0], Anatomy(gemini_cfg.anatomy)).outgoing(45, 110)
    with FakeGemini() as fake:
        gemini_cfg.teacher.gemini.base_url = fake.url
        fake.queue(*[Fault.status(503)] * 4)
        client = GeminiClient(gemini_cfg.teacher.gemini, tmp_path / "j.jsonl", tmp_path / "a.jsonl")
        with pytest.raises(TeacherFailure) as failure:
            client.generate_json(request, ANSWER_SCHEMA)
        assert failure.value.reason == "http_503"
        assert client.generate_json(request, ANSWER_SCHEMA)  # transient: asked again, now answered
    assert len(fake.calls) == 5


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
