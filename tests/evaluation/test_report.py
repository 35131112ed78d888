"""The report's chart: every bar visible, the legend beside the axes."""

from __future__ import annotations

import pytest

from cme_vlm.evaluation.report import chart_figure, display_name, in_model_order, printable


@pytest.mark.parametrize("n_structures", [1, 5, 11])
def test_the_legend_covers_no_bar_even_at_the_top_of_the_scale(n_structures: int):
    structures = [f"structure_{i}" for i in range(n_structures)]
    metrics = {"models": {m: {"per_structure": {s: {"judge": {"mean": 5.0}} for s in structures}}
                          for m in ("base", "sft", "dpo", "dpo_r2")},
               "provenance": {"judge": "rubric"}, "display_names": {}}
    fig = chart_figure(metrics)
    fig.canvas.draw()
    ax = fig.axes[0]
    legend = ax.get_legend().get_window_extent()
    bars = [bar.get_window_extent() for bar in ax.patches]
    assert len(bars) == 4 * n_structures
    assert not [b for b in bars if legend.overlaps(b)]
    assert fig.get_window_extent().contains(legend.x1 - 1, legend.y0 + 1)  # and the legend is on the picture


def test_structures_go_by_their_display_names_and_text_by_its_visible_characters():
    assert display_name({"display_names": {"angels_hair": "angel's hair"}}, "angels_hair") == "angel's hair"
    assert display_name({}, "preparation_plane") == "preparation plane"  # metrics written before names were kept
    assert printable("a\tb\nc\x1b[31m\u200b\u2028ü") == "a\\tb\nc\\x1b[31m\\u200b\\u2028ü"  # line breaks stay


def test_models_keep_the_report_order_when_metrics_come_back_from_json_with_sorted_keys():
    by_name = {m: {"answer": m} for m in ("base", "dpo", "dpo_r10", "dpo_r2", "sft")}
    metrics = in_model_order({"models": dict(by_name), "cases": [{"answers": dict(by_name)}]})
    assert list(metrics["models"]) == list(metrics["cases"][0]["answers"]) == ["base", "sft", "dpo", "dpo_r2", "dpo_r10"]
