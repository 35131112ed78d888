"""A run's folder and its stage folders' state: skip, resume, stale; what a stale re-run keeps."""

from __future__ import annotations

from pathlib import Path

from cme_vlm import atomic
from cme_vlm.config import load_config
from cme_vlm.layout import STATUS_FILE, run_folder, runs_of, stage_state, stamped
from cme_vlm.pipeline import clear_for_rerun
from cme_vlm.stages import STAGE_BY_NAME


def test_stage_states(tmp_path: Path):
    folder = tmp_path / "03-sft"
    assert stage_state(folder, "a") == "pending"
    folder.mkdir()
    (folder / "checkpoints").mkdir()
    assert stage_state(folder, "a") == "interrupted"
    atomic.write_json(folder / STATUS_FILE, {"fingerprint": "a", "status": "running"})
    assert stage_state(folder, "a") == "interrupted"
    atomic.write_json(folder / STATUS_FILE, {"fingerprint": "a", "status": "done"})
    assert stage_state(folder, "a") == "done"
    assert stage_state(folder, "b") == "stale"


def test_stale_teacher_keeps_paid_audited_and_annotated_files(tmp_path: Path):
    for name in ("dataset", "review", "extra"):
        (tmp_path / name).mkdir()
    (tmp_path / "review" / "review.csv").write_text("id,decision\nr1,approve\n")
    for name in ("journal.jsonl", "audit.jsonl", "summary.json", STATUS_FILE):
        (tmp_path / name).write_text("{}\n")
    clear_for_rerun(STAGE_BY_NAME["teacher"], tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audit.jsonl", "dataset", "journal.jsonl", "review"]
    assert (tmp_path / "review" / "review.csv").read_text() == "id,decision\nr1,approve\n"


def test_run_folder_resumes_the_latest_run_of_the_experiment(tmp_path: Path):
    cfg = load_config(None, [f"output_dir={tmp_path}"])
    for stamp in ("20261101-100000", "20261102-100000"):
        (tmp_path / f"demo-{stamp}").mkdir()
    (tmp_path / "demo-notes").mkdir()
    assert run_folder(cfg) == tmp_path / "demo-20261102-100000"
    assert run_folder(cfg, tmp_path / "mine") == tmp_path / "mine"
    fresh = stamped(tmp_path, "demo")
    fresh.mkdir()
    again = stamped(tmp_path, "demo")  # within the same second: a name of its own
    assert again != fresh and not again.exists() and again.name.startswith(fresh.name)
    again.mkdir()
    assert runs_of(cfg)[-2:] == sorted([fresh, again]) and tmp_path / "demo-notes" not in runs_of(cfg)
