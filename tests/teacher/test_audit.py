"""``cme-vlm audit``: a clean Gemini run passes, every section of every log read; a tampered log or a leaked key fails."""

from __future__ import annotations

import json
import shutil

import pytest
from fake_gemini import FakeGemini

from cme_vlm.anatomy import Anatomy
from cme_vlm.cli import main
from cme_vlm.data.records import load_dataset
from cme_vlm.errors import PrivacyError
from cme_vlm.preference.judges import GeminiPairJudge
from cme_vlm.preference.selection import PairContext
from cme_vlm.schema import JudgeBackend
from cme_vlm.scoring.judge import JudgeCase, make_judge
from cme_vlm.teacher.audit import audit_run
from cme_vlm.teacher.gemini import GeminiClient
from cme_vlm.teacher.request import RecordContext
from cme_vlm.teacher.stage import answer

from .conftest import KEY


@pytest.fixture
def gemini_run(gemini_cfg, records_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(records_dir, run / "01-data")
    with FakeGemini() as fake:
        gemini_cfg.teacher.gemini.base_url = fake.url
        answer(gemini_cfg, run / "01-data", run / "02-teacher")
    return run


def test_clean_run_passes(gemini_cfg, gemini_run):
    report = audit_run(gemini_cfg, gemini_run, gemini_run / "01-data")
    assert report["verdict"] == "pass" and report["requests"] == 10 and report["image_parts"] == 10
    assert json.loads((gemini_run / "privacy_audit.json").read_text())["verdict"] == "pass"


def _tamper(run, edit):
    """Apply ``edit`` to the request lines of the teacher's audit log (its section headers left as they are)."""
    path = run / "02-teacher" / "audit.jsonl"
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    edit([line for line in lines if "record_id" in line])
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda ls: ls[0]["parts"][0].update(sha256=ls[1]["parts"][0]["sha256"]), "not the encoding of its mask"),
        (lambda ls: ls[2].update(text=ls[2]["text"] + " proc001"), "identifier 'proc001'"),
        (lambda ls: ls[3].update(text=ls[3]["text"] + " see /mnt/or/case3/"), "file path"),
        (lambda ls: ls[4].update(record_id="unknown"), "not in the dataset"),
    ],
)
def test_violations_fail_the_audit(gemini_cfg, gemini_run, edit, message):
    _tamper(gemini_run, edit)
    with pytest.raises(PrivacyError, match=message):
        audit_run(gemini_cfg, gemini_run, gemini_run / "01-data")


def test_a_leaked_key_fails_and_the_cli_exits_non_zero(gemini_cfg, gemini_run, monkeypatch):
    (gemini_run / "02-teacher" / "notes.txt").write_text(f"debug key={KEY}\n")
    with pytest.raises(PrivacyError, match="notes.txt contains an API key"):
        audit_run(gemini_cfg, gemini_run, gemini_run / "01-data")
    monkeypatch.setenv("GEMINI_API_KEY", KEY)
    assert main(["audit", "--run-dir", str(gemini_run)]) == 2
    (gemini_run / "02-teacher" / "notes.txt").unlink()
    assert main(["audit", "--run-dir", str(gemini_run)]) == 0


def test_a_re_run_appends_a_section_and_the_audit_reads_every_one(gemini_cfg, gemini_run):
    log = gemini_run / "02-teacher" / "audit.jsonl"
    first = log.read_text()
    gemini_cfg.teacher.gemini.temperature = 0.7  # another setting: every request is asked anew
    with FakeGemini() as fake:
        gemini_cfg.teacher.gemini.base_url = fake.url
        answer(gemini_cfg, gemini_run / "01-data", gemini_run / "02-teacher")
    assert log.read_text().startswith(first)  # the log only grows
    report = audit_run(gemini_cfg, gemini_run, gemini_run / "01-data")
    assert report["sections"] == 2 and report["requests"] == 20 and report["verdict"] == "pass"
    _tamper(gemini_run, lambda ls: ls[-1].update(text=ls[-1]["text"] + " proc001"))
    with pytest.raises(PrivacyError, match=r"line 22: record \w+: the logged text does not match its logged hash"):
        audit_run(gemini_cfg, gemini_run, gemini_run / "01-data")


def test_a_log_without_sections_passes_and_lines_of_any_other_shape_fail(gemini_cfg, gemini_run):
    log = gemini_run / "02-teacher" / "audit.jsonl"
    requests = [x for x in log.read_text().splitlines() if not x.startswith('{"section"')]
    log.write_text("".join(x + "\n" for x in requests))  # as the code before sections wrote it
    report = audit_run(gemini_cfg, gemini_run, gemini_run / "01-data")
    assert report["verdict"] == "pass" and report["sections"] == 0 and report["requests"] == 10
    odd = [{"section": {"model": "m", "note": "see case 3"}}, {"record_id": "", "note": "see case 3"}]
    log.write_text(log.read_text() + "".join(json.dumps(x) + "\n" for x in odd))
    with pytest.raises(PrivacyError, match="line 11: a malformed section header") as failure:
        audit_run(gemini_cfg, gemini_run, gemini_run / "01-data")
    assert "line 12: record '': the line has fields ['note', 'record_id'], not those of a logged request" in str(failure.value)


def test_the_audit_reads_the_pair_judges_and_the_evaluation_judges_logs_too(gemini_cfg, gemini_run):
    row = load_dataset(gemini_run / "02-teacher")[0]
    verdicts = {"accepted": 1, "rejected": 2, "reason": "r"} | {
        k: 4 for k in ("identification", "position", "significance", "clinical", "conciseness")} | {"explanation": "e"}
    with FakeGemini(answer=lambda body: verdicts) as fake:
        g = gemini_cfg.teacher.gemini
        g.base_url = fake.url
        make_judge(gemini_cfg, JudgeBackend.gemini, workdir=gemini_run / "06-eval").score(JudgeCase.from_row(row, "A."))
        client = GeminiClient(g, gemini_run / "04-preference" / "journal.jsonl", gemini_run / "04-preference" / "audit.jsonl")
        pair = GeminiPairJudge(client, g.model, Anatomy(gemini_cfg.anatomy)).for_record(RecordContext.from_row(row))
        pair.choose(PairContext(row["structure"], row["side"], row["phase"], row["prompt"], row["answer"]), ["A.", "B."])
    report = audit_run(gemini_cfg, gemini_run, gemini_run / "01-data")
    assert [f["path"] for f in report["files"]] == ["02-teacher/audit.jsonl", "04-preference/audit.jsonl",
                                                    "06-eval/judge_audit.jsonl"]
    assert report["sections"] == 3 and report["requests"] == 12 and report["verdict"] == "pass"
    log = gemini_run / "06-eval" / "judge_audit.jsonl"
    header, line = (json.loads(x) for x in log.read_text().splitlines())
    line["text"] += f" Seen in {row['frame']}."
    log.write_text(json.dumps(header) + "\n" + json.dumps(line) + "\n")
    with pytest.raises(PrivacyError, match=r"06-eval/judge_audit.jsonl line 2: .*local identifier"):
        audit_run(gemini_cfg, gemini_run, gemini_run / "01-data")
