"""The dry-run's workload: records per split counted from a DSAD tree, paid calls with their tokens, training steps."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from cme_vlm.cli import main
from cme_vlm.config import load_config
from cme_vlm.config_files import REPO_ROOT
from cme_vlm.data.stage import build
from cme_vlm.workload import RecordCounts, calls_table, count_records, image_tokens, optimizer_steps, request_tokens

from data.dsad_tree import STRUCTURES, write_dsad_layout

DSAD = REPO_ROOT / "experiments" / "dsad.yaml"


def test_dsad_records_are_counted_from_the_tree_by_surgery_and_match_the_build(tmp_path: Path):
    tree = write_dsad_layout(tmp_path / "dsad", frames=44, surgeries=4)
    cfg = load_config(DSAD, [f"data.root={tmp_path / 'dsad'}", "data.image_size=32"])
    counted = count_records(cfg, tmp_path / "run")
    multilabel_frames = round(44 * 0.11)
    assert counted.total == 44 - multilabel_frames + multilabel_frames * len(STRUCTURES)  # every mask file, at most
    assert set(counted.structures) == set(STRUCTURES) and "split by surgery" in counted.basis
    build(cfg, tmp_path / "dsad", tmp_path / "run" / "01-data")
    built = count_records(cfg, tmp_path / "run")
    assert built.total == tree.records and built.basis == "records in this run's dataset"
    assert all(built.splits[s] <= counted.splits[s] for s in ("train", "val", "test"))  # the same surgeries per split


def test_paid_calls_carry_their_token_estimate():
    assert image_tokens(384, 384) == 258 and image_tokens(448, 448) == 258 and image_tokens(1920, 1080) == 6 * 258
    cfg = load_config(DSAD, ["teacher.gemini.max_output_tokens=100"])
    counts = RecordCounts({"train": 70, "val": 10, "test": 20}, {"ureter": 60, "spleen": 40}, "test counts")
    rows = {r[0]: r[2:] for r in _rows(calls_table(cfg, counts))}
    calls, tokens, output = rows["teacher answers"]
    assert calls == 100 and output == 100 * 100
    assert 100 * (258 + 100) < tokens < 100 * (258 + 1000)  # the mask image and a few hundred words of text
    assert rows["pair selection"][0] == 80 * 2  # train + val records, asked twice (preference.two_pass in the paper)
    assert rows["evaluation judge"][0] == 20 * 3  # test records x base, SFT, DPO


def test_a_request_costs_its_characters_and_its_masks():
    from cme_vlm.teacher.request import OutgoingRequest, RecordContext

    request = OutgoingRequest("teacher", "s" * 399, {"structure": "x" * 100}, RecordContext("", "", ""), (b"png",))
    assert request_tokens(request, 448) == math.ceil((399 + len(request.user_text())) / 4) + 258


def test_training_steps_follow_batch_accumulation_epochs_and_devices():
    cfg = load_config(DSAD)
    assert optimizer_steps(cfg.sft, 2452) == math.ceil(math.ceil(2452 / cfg.sft.batch_size) / cfg.sft.grad_accum)
    cfg = load_config(DSAD, ["sft.devices=4", "sft.epochs=2", "sft.max_steps=-1"])
    assert optimizer_steps(cfg.sft, 2452) == 2 * math.ceil(math.ceil(2452 / (cfg.sft.batch_size * 4)) / cfg.sft.grad_accum)


@pytest.mark.slow
def test_the_dsad_dry_run_prints_records_calls_tokens_and_steps(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    write_dsad_layout(tmp_path / "dsad", frames=44, surgeries=4)
    assert main(["run", str(DSAD), f"data.root={tmp_path / 'dsad'}", "--dry-run", "--run-dir", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    for expected in ("records and training steps", "masks in the DSAD tree", "teacher answers", "input tokens",
                     "optimizer steps", "sft", "dpo"):
        assert expected in out, expected
    assert not (tmp_path / "r").exists()


def _rows(table) -> list[list]:
    cells = [list(c.cells) for c in table.columns]
    return [[_number(cells[i][r]) for i in range(len(cells))] for r in range(len(cells[0]))]


def _number(cell: str) -> int | str:
    return int(cell.replace(",", "")) if cell.replace(",", "").isdigit() else cell
