"""Runs are never overwritten by a different experiment: a config that would re-run finished stages of a run
starts a new run folder (carrying over the stages still up to date), unless the user names the run to continue;
a stage command without --out writes beside the run's stage folders, never into them."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest

from cme_vlm import atomic, pipeline
from cme_vlm.cli import main, parse, resolve_paths
from cme_vlm.config import load_config
from cme_vlm.layout import STATUS_FILE, read_status
from cme_vlm.stages import fingerprints, stages_for

OTHER_MODEL = ["model=tiny_qwen3_vl"]  # the README's "extending" path: SFT and everything after it change


def _finished_run(folder: Path, overrides: list[str]) -> Path:
    """A run folder whose every stage finished under ``overrides``, with a paid journal and a trained model."""
    cfg = load_config(None, overrides)
    for stage, fp in zip(stages_for(cfg), fingerprints(cfg).values(), strict=True):
        atomic.write_json(folder / stage.folder / STATUS_FILE, {"fingerprint": fp, "status": "done", "seconds": 1})
        atomic.write_text(folder / stage.folder / "output.txt", stage.name)
    atomic.append_jsonl(folder / "02-teacher" / "journal.jsonl", {"paid": 1})
    atomic.write_text(folder / "03-sft" / "model" / "weights.bin", "trained")
    return folder


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def fake_stages(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Stages that only record that they ran (in order) and write a file; their registry entries are the real ones."""
    ran: list[str] = []

    def fake(stage):
        def load():
            def call(cfg, out, **inputs):
                ran.append(stage.folder)
                atomic.write_text(Path(out) / "output.txt", f"{stage.name} ({cfg.model.name})")
            return call
        return dataclasses.replace(stage, load=load)

    monkeypatch.setattr(pipeline, "stages_for", lambda cfg: [fake(s) for s in stages_for(cfg)])
    return ran


def test_a_different_experiment_starts_a_new_run_and_leaves_the_finished_one_untouched(
        tmp_path: Path, fake_stages: list[str], capsys: pytest.CaptureFixture[str]):
    base = [f"output_dir={tmp_path}", "wandb.mode=disabled"]
    demo = _finished_run(tmp_path / "demo-20260101-100000", base)
    before = _snapshot(demo)

    other = pipeline.run(load_config(None, [*base, *OTHER_MODEL]))
    assert other != demo and other.parent == tmp_path and _snapshot(demo) == before
    said = " ".join(capsys.readouterr().err.split())
    assert f"{demo}" in said and f"{other}" in said and f"--run-dir {demo}" in said
    assert fake_stages == ["03-sft", "04-preference", "05-dpo", "06-eval"]  # the rest was carried over
    for folder in ("00-frames", "01-data", "02-teacher"):
        assert read_status(other / folder) == read_status(demo / folder), folder
    journal = other / "02-teacher" / "journal.jsonl"  # a kept (paid) file is a copy of its own, never shared
    assert journal.read_text() == (demo / "02-teacher" / "journal.jsonl").read_text()
    assert not journal.samefile(demo / "02-teacher" / "journal.jsonl")
    atomic.append_jsonl(journal, {"paid": 2})
    assert _snapshot(demo) == before

    fake_stages.clear()
    assert pipeline.run(load_config(None, base)) == demo and fake_stages == []  # the demo's config: its run, all done
    assert pipeline.run(load_config(None, [*base, *OTHER_MODEL])) == other and fake_stages == []
    assert pipeline.run(load_config(None, [*base, *OTHER_MODEL]), demo) == demo  # asked for: re-run in place
    assert fake_stages == ["03-sft", "04-preference", "05-dpo", "06-eval"]
    assert (demo / "03-sft" / "output.txt").read_text() == "sft (tiny_qwen3_vl)"


def test_a_stage_command_without_out_writes_beside_the_runs_stage_folder(tmp_path: Path):
    base = [f"output_dir={tmp_path}", "data.synthetic.n_frames=4", "data.synthetic.n_procedures=2"]
    demo = _finished_run(tmp_path / "demo-20260101-100000", base)
    before = _snapshot(demo)
    assert main(["data", "synth", *base, "anatomy.structures.duodenum.annotation_count=1"]) == 0
    assert {k: v for k, v in _snapshot(demo).items() if not k.startswith("00-frames-")} == before
    (written,) = [p for p in demo.iterdir() if p.name.startswith("00-frames-")]
    assert (written / "manifest.jsonl").is_file()

    command, args, experiment, overrides = parse(["train", "sft", *base])
    paths = resolve_paths(command, args, load_config(experiment, overrides))
    assert paths["dataset"] == demo / "02-teacher" / "dataset"  # inputs still come from the run
    assert paths["out"].parent == demo and paths["out"].name.startswith("03-sft-2")
