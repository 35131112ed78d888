"""Stage bookkeeping of the pipeline: fingerprints, skip/resume/stale decisions."""

from __future__ import annotations

from pathlib import Path

from cme_vlm import atomic
from cme_vlm.config import load_config
from cme_vlm.pipeline import STATUS_FILE, _clear_stale, fingerprints, stage_state, steps_for


def test_changed_section_changes_only_its_stage_and_later():
    base = fingerprints(load_config())
    changed = fingerprints(load_config(None, ["preference.k=4", "preference.sampling=[{},{},{},{}]"]))
    assert [s for s in base if base[s] != changed[s]] == ["preference", "dpo", "eval"]
    data_changed = fingerprints(load_config(None, ["data.overlay.alpha=0.3"]))
    assert [s for s in base if base[s] == data_changed[s]] == ["frames"]


def test_real_data_skips_scene_drawing_and_sft_only_skips_dpo():
    cfg = load_config(None, ["data=dsad", "eval.models=[base, sft]"])
    assert [s.name for s in steps_for(cfg)] == ["data", "teacher", "sft", "eval"]


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


def test_stale_stage_keeps_paid_journal(tmp_path: Path):
    (tmp_path / "dataset").mkdir()
    (tmp_path / "journal.jsonl").write_text('{"paid": 1}\n')
    (tmp_path / "summary.json").write_text("{}")
    _clear_stale(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["journal.jsonl"]
