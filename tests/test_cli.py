"""The command line: default paths from the run layout, sweep-run folders, error exit codes."""

from __future__ import annotations

from pathlib import Path

import pytest

from cme_vlm.cli import _parser, main, parse, resolve_paths
from cme_vlm.config import load_config
from cme_vlm.config_files import GROUP_FOLDERS


def _paths(argv: list[str]) -> dict[str, Path | None]:
    command, args, experiment, overrides = parse(argv)
    return resolve_paths(command, args, load_config(experiment, overrides, args.configs))


def test_stage_paths_default_to_the_run_layout(tmp_path: Path):
    paths = _paths(["train", "sft", "--run-dir", str(tmp_path)])
    assert paths["dataset"] == tmp_path / "02-teacher" / "dataset"
    assert paths["out"].parent == tmp_path and paths["out"].name.startswith("03-sft-")  # beside, never 03-sft itself
    paths = _paths(["preference", "build", "--run-dir", str(tmp_path), "--out", str(tmp_path / "x")])
    assert paths["model"] == tmp_path / "03-sft" / "model" and paths["out"] == tmp_path / "x"


def test_sweep_runs_get_their_own_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("WANDB_SWEEP_ID", "sw1")
    monkeypatch.setenv("WANDB_RUN_ID", "abc")
    assert _paths(["train", "sft", "--run-dir", str(tmp_path)])["out"] == tmp_path / "03-sft-sweeps" / "abc"


def test_user_error_exits_2_with_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path):
    assert main(["data", "build", "--run-dir", str(tmp_path), "data.overlay.alpah=0.2"]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "data.overlay.alpah" in err and "Traceback" not in err
    assert not (tmp_path / "01-data").exists()


def test_run_takes_an_override_where_the_experiment_may_stand(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert main(["run", "eval.max_cases=3", "--dry-run", "--run-dir", str(tmp_path / "r")]) == 0
    assert "plan for 'demo'" in capsys.readouterr().out


def test_audit_takes_the_run_folder_as_the_readme_writes_it(tmp_path: Path):
    assert _paths(["audit", str(tmp_path)]) == {"run_dir": tmp_path, "dataset": tmp_path / "01-data" / "dataset"}
    assert _paths(["audit", "--run-dir", str(tmp_path)])["run_dir"] == tmp_path


def test_required_paths_and_flags_reach_the_function(tmp_path: Path):
    paths = _paths(["review", "import", "--sheet", str(tmp_path / "s.csv"), "--run-dir", str(tmp_path)])
    assert paths == {"sheet": tmp_path / "s.csv", "dataset": tmp_path / "02-teacher" / "dataset"}
    with pytest.raises(SystemExit):
        _parser().parse_known_args(["review", "import"])


def test_help_is_written_for_users(capsys: pytest.CaptureFixture[str]):
    for argv in (["--help"], ["run", "--help"], ["train", "sft", "--help"]):
        with pytest.raises(SystemExit):
            main(argv)
        text = " ".join(capsys.readouterr().out.split())
        assert "``" not in text and "call one function" not in text, argv
        assert "a.b=1" in text and "model=tiny_qwen3_vl" in text and "Example" in text, argv
        assert ", ".join(GROUP_FOLDERS) in text, argv
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    assert "cme-vlm run experiments/paper.yaml --dry-run" in " ".join(capsys.readouterr().out.split())
