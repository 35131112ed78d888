"""The response journal: final outcomes only, append-only, and a journal written by older code."""

from __future__ import annotations

import json

import pytest
from fake_gemini import FakeGemini

from cme_vlm.anatomy import Anatomy
from cme_vlm.data.records import load_dataset
from cme_vlm.teacher.backend import ANSWER_SCHEMA
from cme_vlm.teacher.cache import Journal, JournalEntry
from cme_vlm.teacher.gemini import GeminiClient
from cme_vlm.teacher.request import build_teacher_request
from cme_vlm.teacher.stage import answer

# What the code before the transient/final rule journalled as final, each after a single attempt.
OLD_TRANSIENT = ("empty", "malformed", "truncated", "schema")


def _row(key: str, failure: str = "", data: dict | None = None) -> dict:
    return {"key": key, "model": "m", "record_id": key, "purpose": "teacher", "data": data, "failure": failure,
            "time": "2025-06-01T10:00:00+0000"}


def test_only_final_outcomes_count_and_the_first_one_wins(tmp_path):
    path = tmp_path / "journal.jsonl"
    rows = [_row("a", "empty"), _row("a", data={"answer": "first"}), _row("a", data={"answer": "second"}),
            _row("b", "blocked:SAFETY"), _row("c", "http:503")]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    journal = Journal(path)
    assert len(journal) == 2 and journal.get("a").data == {"answer": "first"} and journal.get("c") is None
    with pytest.raises(ValueError, match="not final"):
        journal.put(JournalEntry("c", "m", "c", "teacher", failure="timeout:ReadTimeout"))
    journal.put(JournalEntry("c", "m", "c", "teacher", {"answer": "now"}))
    assert path.read_text().startswith("".join(json.dumps(r) + "\n" for r in rows))  # appended, nothing rewritten
    assert Journal(path).get("c").data == {"answer": "now"}


def test_a_re_run_asks_again_what_the_old_code_journalled_as_transient_failures(records_dir, gemini_cfg, tmp_path):
    """The journal of a run made before the rule: four transient failures recorded as final, a safety block, answers."""
    out, g = tmp_path / "02-teacher", gemini_cfg.teacher.gemini
    settings = GeminiClient(g, tmp_path / "unused_journal.jsonl", tmp_path / "unused_audit.jsonl").settings()
    anatomy, t = Anatomy(gemini_cfg.anatomy), gemini_cfg.teacher
    failures = (*OLD_TRANSIENT, "blocked:SAFETY")
    rows = []
    for i, record in enumerate(load_dataset(records_dir)):
        request = build_teacher_request(record, anatomy).outgoing(t.min_words, t.max_words)
        key = request.content_key(g.model, settings, ANSWER_SCHEMA)
        failure = failures[i] if i < len(failures) else ""
        rows.append({**_row(key, failure, None if failure else {"answer": f"An answer paid for earlier, {i}."}),
                     "model": g.model, "record_id": record["id"]})
    out.mkdir()
    old = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)  # as atomic.append_jsonl wrote them
    (out / "journal.jsonl").write_text(old)
    gemini_cfg.teacher.max_failure_fraction = 0.2
    with FakeGemini() as fake:
        g.base_url = fake.url
        answer(gemini_cfg, records_dir, out)
        asked = len(fake.calls)
        answer(gemini_cfg, records_dir, out)
    assert asked == len(OLD_TRANSIENT) and len(fake.calls) == asked  # the second re-run asks nothing
    ds = load_dataset(out)
    answers = dict(zip(ds["id"], ds["answer"]))
    assert all(answers[r["record_id"]].startswith("The highlighted structure") for r in rows[: len(OLD_TRANSIENT)])
    assert answers[rows[len(OLD_TRANSIENT)]["record_id"]] == ""  # the safety block stays final
    assert all(answers[r["record_id"]] == r["data"]["answer"] for r in rows[len(failures):])  # paid answers reused
    journal = (out / "journal.jsonl").read_text()
    assert journal.startswith(old) and len(journal.splitlines()) == len(rows) + len(OLD_TRANSIENT)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["failed_by_reason"] == {"blocked:SAFETY": 1}
    assert summary["cached"] == summary["answered"] == len(rows) - 1
