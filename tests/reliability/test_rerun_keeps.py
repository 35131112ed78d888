"""A stage that re-runs because its config changed keeps everything paid, audited or annotated.

The whole pipeline runs with every Gemini backend at a fake endpoint (so the teacher, the pair
judge and the evaluation judge each write a paid-response journal and an audit log); an expert
fills the answer-review, pair-review and evaluation sheets; then a changed data key makes every
stage from the records on stale, and the pipeline runs again. Each stage's declared ``keeps``
files survive: a journal or audit log only grows (its old bytes are the start of the new file),
an annotation is byte-identical.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fake_gemini import FakeGemini

from cme_vlm.config_files import REPO_ROOT
from cme_vlm.stages import STAGES

from .conftest import GEMINI_EVERYWHERE, TINY, cli, finish, gemini_overrides, schema_answer

PAID_OR_AUDITED = {
    "02-teacher": ("journal.jsonl", "audit.jsonl"),
    "04-preference": ("journal.jsonl", "audit.jsonl"),
    "06-eval": ("judge_journal.jsonl", "judge_audit.jsonl"),
}
ANNOTATIONS = ("02-teacher/review/review.csv", "04-preference/review/review.csv", "06-eval/expert/sheet.csv",
               "06-eval/expert-key.json")


def _files(run: Path, names: list[str]) -> dict[str, bytes]:
    return {name: (run / name).read_bytes() for name in names}


@pytest.mark.slow
def test_a_changed_config_reruns_every_stage_and_keeps_what_was_paid_audited_or_annotated(tmp_path: Path):
    run, log = tmp_path / "run", tmp_path / "log"
    base = ["--config", str(REPO_ROOT / "experiments" / "demo.yaml"), "--run-dir", str(run), *TINY, *GEMINI_EVERYWHERE]
    with FakeGemini(answer=schema_answer) as fake:
        finish(cli(["run", *base, *gemini_overrides(fake.url)], log), log)
        for words in (["review", "export", "--fraction", "0.5"], ["preference", "review-export", "--fraction", "0.5"],
                      ["expert", "export"]):
            finish(cli([*words, *base, *gemini_overrides(fake.url)], log), log)
        paid = _files(run, [f"{stage}/{name}" for stage, names in PAID_OR_AUDITED.items() for name in names])
        annotated = _files(run, [a for a in ANNOTATIONS if (run / a).is_file()])
        status = {s.folder: (run / s.folder / "stage.json").read_text() for s in STAGES}
        finish(cli(["run", *base, *gemini_overrides(fake.url), "data.overlay.alpha=0.3"], log), log)

    rerun = [folder for folder, before in status.items() if (run / folder / "stage.json").read_text() != before]
    assert rerun == [s.folder for s in STAGES if s.name != "frames"]
    assert len(annotated) == len(ANNOTATIONS)
    for name, before in paid.items():
        after = (run / name).read_bytes()
        assert after.startswith(before) and len(after) >= len(before), name
    for name, before in annotated.items():
        assert (run / name).read_bytes() == before, name
    declared = {(s.folder, k) for s in STAGES for k in s.keeps}
    for name in [*paid, *annotated]:
        folder, first, *_ = name.split("/")
        assert (folder, first) in declared, f"{name} is not in its stage's keeps"
