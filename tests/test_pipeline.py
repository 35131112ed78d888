"""The whole pipeline on a reduced demo: every stage's outputs, the report's numbers, skipping and re-running,
and every config key a stage reads declared in the stage registry."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from config_reads import leaf_keys, record_reads

from cme_vlm import pipeline
from cme_vlm.atomic import current_umask
from cme_vlm.cli import main
from cme_vlm.config import load_config
from cme_vlm.data.records import load_dataset
from cme_vlm.layout import STATUS_FILE, read_status
from cme_vlm.pipeline import run
from cme_vlm.stages import TRACKING_KEYS, Stage, stages_for

SMALL = [
    "data.synthetic.n_frames=30", "data.synthetic.n_procedures=6", "sft.epochs=2", "sft.batch_size=4",
    "preference.k=2", "preference.max_new_tokens=16", "dpo.epochs=1", "eval.max_new_tokens=24",
    "eval.max_cases=6", "wandb.judge_subset=2", "teacher.max_words=60", "preference.rounds=2",
]

OUTPUTS = {
    "00-frames": ["manifest.jsonl"],
    "01-data": ["dataset", "config.yaml"],
    "02-teacher": ["dataset", "summary.json", "journal.jsonl", "config.yaml"],
    "03-sft": ["model/config.json", "checkpoints/last.ckpt", "metrics.json", "config.yaml"],
    "04-preference": ["dataset", "candidates.jsonl", "config.yaml"],
    "05-dpo": ["model/config.json", "metrics.json", "config.yaml"],
    "04-preference-r2": ["dataset", "candidates.jsonl", "config.yaml"],  # the second preference round
    "05-dpo-r2": ["model/config.json", "metrics.json", "config.yaml"],
    "06-eval": ["report.md", "report.html", "metrics.json", "config.yaml"],
}
STAGES_RUN = {s.name: s for s in stages_for(load_config(None, SMALL))}


def recording(stage: Stage, reads: dict[str, set[str]]) -> Stage:
    """``stage`` whose function runs on a copy of the config that records every key it reads into ``reads``."""

    def load():
        function = stage.load()

        def call(cfg, **paths):
            with record_reads(cfg) as (tracked, keys):
                function(tracked, **paths)
            reads[stage.name] = keys

        return call

    return dataclasses.replace(stage, load=load)


@pytest.fixture(scope="module")
def recorded_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, set[str]]]:
    """The small demo run, and the config keys each stage read while it ran."""
    root = tmp_path_factory.mktemp("pipeline") / "demo-run"
    reads: dict[str, set[str]] = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pipeline, "stages_for", lambda cfg: [recording(s, reads) for s in stages_for(cfg)])
        run(load_config(None, SMALL), root)
    return root, reads


@pytest.fixture(scope="module")
def demo_run(recorded_run) -> Path:
    return recorded_run[0]


@pytest.mark.slow
def test_every_key_a_stage_reads_is_declared_in_the_registry(recorded_run):
    _, reads = recorded_run
    assert {STAGES_RUN[name].folder for name in reads} == set(OUTPUTS)
    for name, keys in reads.items():
        assert keys, name
        undeclared = sorted(k for k in keys if not STAGES_RUN[name].reads_key(k))
        assert not undeclared, f"stage '{name}' reads {undeclared}; add them to its reads in cme_vlm/stages.py"


# Keys the small demo run does not reach, each with the module that reads it on its own path.
READ_ELSEWHERE = {
    "data.dsad_side": "data/stage.py", "data.dsad_phase": "data/stage.py",  # the Dresden layout
    "teacher.gemini": "teacher/gemini.py",  # the Gemini teacher and judges
    "review.fraction": "review_sheet.py", "review.seed": "review_sheet.py",  # cme-vlm review export
    "sft.freezing.lora": "models/freezing.py", "dpo.freezing.lora": "models/freezing.py",  # LoRA components
    "sft.augment": "training/datamodules.py",  # augmentation, off in the demo
    "sft.checkpoint_every": "training/stepping.py", "dpo.checkpoint_every": "training/stepping.py",  # checkpointing
    "preference.filter_action": "preference/selection.py",  # preference.selection=filter
    "eval.expert_cases": "evaluation/expert.py", "eval.seed": "evaluation/expert.py",  # cme-vlm expert export
    "bench": "bench/inputs.py",  # cme-vlm bench
    "preference.rounds": "stages.py",  # how many preference and DPO stages the registry lays out
}


@pytest.mark.slow
def test_every_config_key_is_read_by_some_stage_or_command(recorded_run):
    _, reads = recorded_run
    read = set().union(*reads.values())
    cfg = load_config(None, SMALL)
    unread = [k for k in leaf_keys(cfg) if k.split(".")[0] not in TRACKING_KEYS
              and k not in read and not any(k.startswith(r + ".") for r in read)
              and not any(k == e or k.startswith(e + ".") for e in READ_ELSEWHERE)]
    assert not unread, f"config keys nothing reads: {unread}; use them or remove them from cme_vlm/schema.py"
    package = Path(__file__).resolve().parents[1] / "cme_vlm"
    for key, module in READ_ELSEWHERE.items():
        assert f".{key.split('.')[-1]}" in (package / module).read_text(), (key, module)


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
    assert set(metrics["models"]) == {"base", "sft", "dpo", "dpo_r2"}
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
def test_the_second_preference_round_samples_from_and_refers_to_the_first_rounds_dpo_model(demo_run: Path):
    from cme_vlm.models.loading import load_model
    from cme_vlm.preference.reference import precompute_reference

    cfg = load_config(None, SMALL)
    pairs = load_dataset(demo_run / "04-preference-r2")
    first = pairs.select(range(min(2, len(pairs))))
    recomputed = precompute_reference(load_model(cfg, demo_run / "05-dpo" / "model"), first, 2, cfg.dpo.max_length)
    assert recomputed["ref_logp_accepted"] == pytest.approx(first["ref_logp_accepted"], rel=1e-5)
    metrics = {r: json.loads((demo_run / f"05-dpo{r}" / "metrics.json").read_text()) for r in ("", "-r2")}
    assert all(m["steps"] > 0 for m in metrics.values())
    weights = [(demo_run / f"05-dpo{r}" / "model" / "model.safetensors").read_bytes() for r in ("", "-r2")]
    assert weights[0] != weights[1]


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
    for expected in ("05-dpo", "data.manifest", "GEMINI_API_KEY", "teacher answers", "3773", "training memory", "GiB",
                     "disk and host memory", "62.5",  # the 7B's SFT checkpoint: bf16 weights and Kahan AdamW state
                     "models loaded from this machine", "roberta-large", "eval.bertscore.path"):
        assert expected in out
    assert out.count("missing:") == 2  # the 7B's weights and roberta-large, neither on this machine
    assert not (tmp_path / "paper").exists()


@pytest.mark.slow
def test_every_output_is_as_readable_as_the_umask_allows(demo_run: Path):
    """Reports, datasets, exported models and checkpoints get a plain open's or mkdir's mode (W&B's own files aside)."""
    umask = current_umask()
    wrong = [f"{p.stat().st_mode & 0o777:o} {p.relative_to(demo_run)}" for p in demo_run.rglob("*")
             if "wandb" not in p.relative_to(demo_run).parts and not p.is_symlink()
             and p.stat().st_mode & 0o777 != (0o777 if p.is_dir() else 0o666) & ~umask]
    assert not wrong, wrong[:20]
