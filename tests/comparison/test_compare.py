"""`cme-vlm compare`: two runs side by side, paired tests between runs, config differences; refusal on other test sets."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from chromium import screenshot

from cme_vlm.cli import main
from cme_vlm.comparison import compare_runs
from cme_vlm.config import load_config
from cme_vlm.errors import DataError

from .conftest import write_evaluation


def test_the_report_puts_both_runs_side_by_side_with_paired_tests(two_runs, tmp_path: Path):
    demo, ablation = two_runs
    html = compare_runs(load_config(), [demo, ablation / "06-eval"], tmp_path / "cmp")  # a run or its eval folder
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert "| Metric | demo-20260101-000000 · Base | demo-20260101-000000 · SFT |" in md
    assert "demo-no-overlay-20260101-010000 · DPO |" in md
    row = next(line for line in md.splitlines() if line.startswith("| SFT | Identification accuracy |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[4:6] == ["0.90", "0.40"] and cells[6] == "0.500" and float(cells[7]) < 0.01 and cells[8] == "30"
    assert "| Identification accuracy | demo-20260101-000000 · Base | 0.00 ± 0.00 |" not in md  # Table 1 is per column
    assert re.search(r"\| data\.overlay\.enabled \| True \| False \|", md)
    assert "| ablation | – | no_overlay |" in md
    assert md.count("### demo") == 2 and md.count("Model **SFT**") == 2  # which model and data made each figure
    assert "Paired tests per structure" in md and "| pancreas | SFT | Identification accuracy |" in md
    assert "| angel's hair | SFT | Identification accuracy |" in md and "angels" not in md  # the registry's names
    summary = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    sft = next(t for t in summary["tests"] if t["model"] == "sft" and t["metric"] == "identification")
    assert sft["p_value"] < 0.01 and sft["n"] == 30 and "significantly better" in sft["verdict"]
    page = html.read_text()
    assert page.count("data:image/png;base64,") == 2 and "<table>" in page
    screenshot(html, tmp_path / "compare.png")


def test_runs_evaluated_on_other_test_records_are_refused_with_the_reason(two_runs, tmp_path: Path):
    demo, _ = two_runs
    fewer = write_evaluation(tmp_path / "fewer", None, identified=20, seed=2, drop=3)
    with pytest.raises(DataError, match=r"different test records \(30 and 27; 3 only in the first.*eval\.max_cases"):
        compare_runs(load_config(), [demo, fewer], tmp_path / "cmp")
    assert not (tmp_path / "cmp").exists()
    with pytest.raises(DataError, match="does not exist. Run `cme-vlm evaluate`"):
        compare_runs(load_config(), [demo, tmp_path / "nowhere"], tmp_path / "cmp")


def test_the_command_takes_the_runs_bare(two_runs, tmp_path: Path):
    assert main(["compare", *map(str, two_runs), "--out", str(tmp_path / "cmp")]) == 0
    assert (tmp_path / "cmp" / "compare.html").is_file()
    assert main(["compare", str(two_runs[0])]) == 2  # one run is nothing to compare
