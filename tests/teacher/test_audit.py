"""``cme-vlm audit``: a clean Gemini run passes; a tampered audit log or a leaked key fails."""

from __future__ import annotations

import json
import shutil

import pytest
from fake_gemini import FakeGemini

from cme_vlm.cli import main
from cme_vlm.errors import PrivacyError
from cme_vlm.teacher.audit import audit_run
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
    report = audit_run(gemini_cfg, gemini_run)
    assert report["verdict"] == "pass" and report["requests"] == 10 and report["image_parts"] == 10
    assert json.loads((gemini_run / "privacy_audit.json").read_text())["verdict"] == "pass"


def _tamper(run, edit):
    path = run / "02-teacher" / "audit.jsonl"
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    edit(lines)
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
        audit_run(gemini_cfg, gemini_run)


def test_a_leaked_key_fails_and_the_cli_exits_non_zero(gemini_cfg, gemini_run, monkeypatch):
    (gemini_run / "02-teacher" / "notes.txt").write_text(f"debug key={KEY}\n")
    with pytest.raises(PrivacyError, match="notes.txt contains an API key"):
        audit_run(gemini_cfg, gemini_run)
    monkeypatch.setenv("GEMINI_API_KEY", KEY)
    assert main(["audit", "--run-dir", str(gemini_run)]) == 2
    (gemini_run / "02-teacher" / "notes.txt").unlink()
    assert main(["audit", "--run-dir", str(gemini_run)]) == 0
