"""The whole pipeline on a reduced demo: every stage's outputs, the report's numbers, skipping and re-running."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cme_vlm.cli import main
from cme_vlm.config import load_config
from cme_vlm.data.records import load_dataset
from cme_vlm.pipeline import STATUS_FILE, read_status, run

SMALL = [
    "data.synthetic.n_frames=30", "data.synthetic.n_procedures=6", "sft.epochs=2", "sft.batch_size=4",
    "preference.k=2", "preference.max_new_tokens=16", "dpo.epochs=1", "eval.max_new_tokens=24",
    "eval.max_cases=6", "wandb.judge_subset=2", "teacher.max_words=60",
]

OUTPUTS = {
    "00-frames": ["manifest.jsonl"],
    "01-data": ["dataset", "config.yaml"],
    "02-teacher": ["dataset", "summary.json", "journal.jsonl", "config.yaml"],
    "03-sft": ["model/config.json", "checkpoints/last.ckpt", "metrics.json", "config.yaml"],
    "04-preference": ["dataset", "candidates.jsonl", "config.yaml"],
    "05-dpo": ["model/config.json", "metrics.json", "config.yaml"],
    "06-eval": ["report.md", "report.html", "metrics.json", "config.yaml"],
}


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pipeline") / "demo-run"
    run(load_config(None, SMALL), root)
    return root


@pytest.mark.slow
def test_every_stage_writes_its_outputs(demo_run: Path):
    for stage, files in OUTPUTS.items():
        assert read_status(demo_run / stage)["status"] == "done", stage
        for name in files:
            assert (demo_run / stage / name).exists(), f"{stage}/{name}"
    answered = load_dataset(demo_run / "02-teacher")
    assert all(answered["answer"]) and set(answered["provenance"]) == {"teacher"}
    pairs = load_dataset(demo_run / "04-preference")
    assert len(pairs) > 0 and all(a != r for a, r in zip(pairs["accepted"], pairs["rejected"]))


@pytest.mark.slow
def test_report_numbers_are_consistent(demo_run: Path):
    metrics = json.loads((demo_run / "06-eval" / "metrics.json").read_text())
    assert set(metrics["models"]) == {"base", "sft", "dpo"}
    n_cases = len(metrics["cases"])
    assert n_cases == 6
    for name, model in metrics["models"].items():
        summary = model["summary"]
        assert summary["bleu4"]["n"] == n_cases and 0 <= summary["bleu4"]["mean"] <= 1
        assert 1 <= summary["judge"]["mean"] <= 5
        per_case = [c["answers"][name]["identification"] for c in metrics["cases"]]
        assert summary["identification"]["mean"] == pytest.approx(sum(per_case) / n_cases)
    report = (demo_run / "06-eval" / "report.md").read_text()
    assert "| Metric | Base | SFT | DPO |" in report and "random weights" in report and "synthetic" in report


@pytest.mark.slow
def test_rerun_skips_and_changed_eval_reruns_only_eval(demo_run: Path):
    before = {s: (demo_run / s / STATUS_FILE).read_text() for s in OUTPUTS}
    run(load_config(None, SMALL), demo_run)
    assert {s: (demo_run / s / STATUS_FILE).read_text() for s in OUTPUTS} == before
    run(load_config(None, [*SMALL, "eval.gallery_size=2"]), demo_run)
    changed = {s for s in OUTPUTS if (demo_run / s / STATUS_FILE).read_text() != before[s]}
    assert changed == {"06-eval"}


def test_paper_dry_run_plans_without_running(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    paper = Path(__file__).resolve().parents[1] / "experiments" / "paper.yaml"
    assert main(["run", str(paper), "--dry-run", "--run-dir", str(tmp_path / "paper")]) == 0
    out = capsys.readouterr().out
    for expected in ("05-dpo", "data.manifest", "GEMINI_API_KEY", "teacher answers", "3773", "training memory", "GiB"):
        assert expected in out
    assert not (tmp_path / "paper").exists()
