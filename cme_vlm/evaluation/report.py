"""Render ``metrics.json`` as ``report.md`` and a self-contained ``report.html`` (chart and images inlined).

The main table follows the paper's Table 1: models as columns (Base / SFT / DPO), metrics as
rows, mean ± std; expert rows, and the judge's agreement with the experts, appear once an
expert sheet has been imported. Structures go by the anatomy registry's display names
(``metrics["display_names"]``); a model's text is shown as written, with control characters
spelled out (``\\x08``) and line breaks kept inside their paragraph or list item, so an answer
cannot break the page's layout.
"""

from __future__ import annotations

import base64
import html
import io
import json
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: the report is written on servers without a display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from cme_vlm import atomic  # noqa: E402
from cme_vlm.errors import DataError  # noqa: E402
from cme_vlm.evaluation.scorecard import METRICS  # noqa: E402

METRICS_FILENAME = "metrics.json"
GALLERY_DIRNAME = "gallery"
CHART_FILENAME = "per_structure.png"
TABLE_METRICS = ("bleu4", "bertscore", "judge", "identification")
MODEL_LABELS = {"base": "Base", "sft": "SFT", "dpo": "DPO"}


def model_label(name: str) -> str:
    """How the report names a model: Base, SFT, DPO, and a later preference round's DPO as "DPO r2"."""
    return MODEL_LABELS.get(name) or name.replace("dpo_r", "DPO r")


def display_name(metrics: dict[str, Any], structure: str) -> str:
    """The registry's name of ``structure`` ("angel's hair"); older metrics without the names give the key, spaced."""
    return metrics.get("display_names", {}).get(structure) or structure.replace("_", " ")


def printable(text: str) -> str:
    """``text`` with control, format and separator characters spelled out (``\\x07``, ``\\t``, ``\\u2028``);
    line breaks stay."""
    return "".join(ch.encode("unicode_escape").decode("ascii")
                   if ch != "\n" and unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") else ch for ch in text)


def _md(text: str) -> str:
    """A model's or a template's text inside one Markdown paragraph or list item: a line break cannot start a bullet."""
    return printable(text).replace("\n", "<br>")


def _html(text: str) -> str:
    return html.escape(printable(text)).replace("\n", "<br>")


def read_metrics(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / METRICS_FILENAME
    if not path.is_file():
        raise DataError(f"'{path}' does not exist. Run `cme-vlm evaluate` first, with --out pointing at this folder.")
    return json.loads(path.read_text(encoding="utf-8"))


def _fmt(s: dict[str, Any]) -> str:
    return "n/a" if not s.get("n") else f"{s['mean']:.2f} ± {s['std']:.2f}"


def main_table(metrics: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of Table 1: one column per model."""
    models = metrics["models"]
    header = ["Metric", *(model_label(m) for m in models)]
    rows = [[METRICS[k], *(_fmt(models[m]["summary"][k]) for m in models)]
            for k in ("bleu4", "bertscore", "judge", "judge_clinical", "judge_conciseness", "identification")]
    rows.append(["Corpus BLEU-4", *(f"{models[m]['corpus_bleu']:.2f}" for m in models)])
    rows.append(["Laterality errors (count)",
                 *(f"{models[m]['laterality_errors']} of {models[m]['collapse']['n']}" for m in models)])
    rows.append(["Collapse (share naming the same structure)",
                 *(f"{models[m]['collapse']['share']:.0%} ({models[m]['collapse']['most_common'] or 'no structure named'})"
                   for m in models)])
    expert = metrics.get("expert")
    if expert:
        rows.append(["Expert score", *(_fmt(expert["scores"].get(m, {})) for m in models)])
        rows.append([f"Preferred model (count of {expert['n_cases']})",
                     *(str(expert["preferred"].get(m, 0)) for m in models)])
    return header, rows


def _interval(low: float | None, high: float | None, fmt: str) -> str:
    return "" if low is None or high is None else f" [{low:{fmt}}, {high:{fmt}}]"


def _rank_row(label: str, structure: str, r: dict[str, Any]) -> list[str]:
    rho = "undefined (one side's scores all equal)" if r["rho"] is None else f"{r['rho']:.2f}"
    return [label, structure, f"{r['n_cases']} ({r['n_answers']} answers)",
            rho + _interval(r["ci_low"], r["ci_high"], ".2f")]


def _preferred_row(structure: str, r: dict[str, Any]) -> list[str]:
    value = "no case with an expert preference" if r["rate"] is None else f"{r['agree']} of {r['n_cases']} ({r['rate']:.0%})"
    return ["Preferred model: the judge's top-scored among the expert's", structure, str(r["n_cases"]),
            value + _interval(r["ci_low"], r["ci_high"], ".0%")]


def agreement_table(agreement: dict[str, Any], name: Callable[[str], str] = lambda s: display_name({}, s)
                    ) -> tuple[list[str], list[list[str]]]:
    """Judge–expert agreement (``cme_vlm.evaluation.agreement``): overall, then per structure (``name``d)."""
    header = ["Comparison", "Structure", "Cases", f"Agreement [{agreement['method']['confidence']:.0%} CI]"]
    rows = []
    for expert, c in agreement["criteria"].items():
        label = f"Expert {expert} vs judge {c['judge']}: Spearman ρ"
        rows += [_rank_row(label, "all", c["overall"]),
                 *(_rank_row(label, name(s), r) for s, r in c["per_structure"].items())]
    pref = agreement["preferred"]
    rows += [_preferred_row("all", pref["overall"]),
             *(_preferred_row(name(s), r) for s, r in pref["per_structure"].items())]
    return header, rows


def agreement_notes(agreement: dict[str, Any]) -> list[str]:
    """How the agreement was measured, and which judge scores the sheet gives nothing to compare with."""
    m = agreement["method"]
    return [f"Rank correlation: {m['rank_correlation']} ({m['resamples']} resamples, seed {m['seed']}).",
            f"Preferred model: {m['preferred']}.",
            "Judge scores with no expert counterpart on the sheet (the expert gives one overall score), not compared: "
            + (", ".join(agreement["judge_only_criteria"]) or "none") + "."]


def structure_table(metrics: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """One row per (structure, model) with the headline metrics."""
    header = ["Structure", "Model", "n", *(METRICS[k] for k in TABLE_METRICS)]
    rows = []
    structures = dict.fromkeys(s for m in metrics["models"].values() for s in m["per_structure"])
    for structure in structures:
        for name, model in metrics["models"].items():
            per = model["per_structure"].get(structure)
            if per:
                rows.append([display_name(metrics, structure), model_label(name), str(per["judge"]["n"]),
                             *(_fmt(per[k]) for k in TABLE_METRICS)])
    return header, rows


def chart_figure(metrics: dict[str, Any], metric: str = "judge") -> Figure:
    """``metric`` per structure, one bar per model (the judge's composite on 1–5, fractions on 0–1); the legend
    sits beside the axes, never on a bar."""
    models = metrics["models"]
    structures = list(dict.fromkeys(s for m in models.values() for s in m["per_structure"]))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.4 * len(structures) + 3), 3.6), dpi=100)
    width = 0.8 / max(1, len(models))
    for i, (name, model) in enumerate(models.items()):
        values = [model["per_structure"].get(s, {}).get(metric, {}).get("mean", 0.0) or 0.0 for s in structures]
        ax.bar([x + i * width for x in range(len(structures))], values, width, label=model_label(name))
    ax.set_xticks([x + width * (len(models) - 1) / 2 for x in range(len(structures))])
    ax.set_xticklabels([display_name(metrics, s) for s in structures], rotation=15)
    judged = metric == "judge"
    ax.set_ylim(0, 5 if judged else 1)
    ax.set_ylabel(f"LLM judge (1–5, {metrics['provenance']['judge']})" if judged else METRICS[metric])
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    return fig


def bar_chart(metrics: dict[str, Any], metric: str = "judge") -> bytes:
    """``chart_figure`` as a PNG."""
    fig = chart_figure(metrics, metric)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def provenance_lines(metrics: dict[str, Any]) -> list[str]:
    p = metrics["provenance"]
    d, b = p["data"], p["bertscore"]
    lines = [
        *(f"Model **{model_label(n)}**: {m['path']} (fingerprint {m['fingerprint']})" for n, m in p["models"].items()),
        f"Data: {d['source']}{' (not clinical data)' if d['synthetic'] else ''}, {d['n_records']} records, splits "
        + ", ".join(f"{k} {v}" for k, v in sorted(d["splits"].items())) + f"; test cases evaluated: {len(metrics['cases'])}",
        f"BLEU: {p['bleu']}",
        f"BERTScore F1: {b['model']}, layer {b['num_layers']}" + (", rescaled with baseline" if b["rescaled"] else ", not rescaled"),
        f"Judge: {p['judge']}, composite = {p['judge_weights']['clinical']} × clinical + "
        f"{p['judge_weights']['conciseness']} × conciseness (normalised)",
        f"Generation: {p['generation']['decoding']}, at most {p['generation']['max_new_tokens']} new tokens",
    ]
    return lines


def case_heading(metrics: dict[str, Any], case: dict[str, Any]) -> str:
    """A gallery case's heading, e.g. "preparation plane (right-sided)"."""
    return f"{display_name(metrics, case['structure'])} ({case['side']}-sided)"


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def render_markdown(metrics: dict[str, Any]) -> str:
    p = metrics["provenance"]
    parts = [f"# Evaluation: {p['experiment']}", ""]
    if p["caveat"]:
        parts += [f"> **Note.** {p['caveat']}", ""]
    parts += ["## Results (Table 1)", "", _md_table(*main_table(metrics)), ""]
    agreement = metrics.get("expert", {}).get("agreement")
    if agreement:
        table = agreement_table(agreement, lambda s: display_name(metrics, s))
        parts += ["## Judge–expert agreement", "", _md_table(*table), "",
                  *(f"- {line}" for line in agreement_notes(agreement)), ""]
    parts += ["## Per structure", "", _md_table(*structure_table(metrics)), "", f"![per structure]({CHART_FILENAME})", "",
              "## Paired tests (Wilcoxon signed-rank)", "", *(f"- {t['verdict']}" for t in metrics["tests"]), "",
              "## Provenance", "", *(f"- {line}" for line in provenance_lines(metrics)), "", "## Gallery", ""]
    for case in (c for c in metrics["cases"] if c["gallery"]):
        parts += [f"### {case_heading(metrics, case)}", "", f"![overlay]({case['gallery']})", "",
                  f"*Prompt:* {_md(case['prompt'])}", "", f"*Reference:* {_md(case['reference'])}", ""]
        parts += [f"- **{model_label(m)}** (judge {a['judge']:.2f}): {_md(a['answer'])}"
                  for m, a in case["answers"].items()]
        parts.append("")
    return "\n".join(parts)


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


# Images keep their proportions (a flex item would otherwise be stretched to the height of its text) and never
# overflow; any text, a model's 600-character "word" included, wraps inside the page.
STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;
overflow-wrap:anywhere}img{max-width:100%;height:auto}
table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:4px 8px;text-align:left}
th{background:#f0f0f0}.note{background:#fff4d6;border-left:4px solid #e0a800;padding:.6em 1em}
.case{display:flex;gap:1em;border-top:1px solid #ddd;padding:1em 0;align-items:flex-start}
.case img{flex:none;width:224px}.case>div{min-width:0}
.answer{margin:.3em 0}.score{font-weight:bold}"""


def render_html(metrics: dict[str, Any], folder: Path, chart: bytes) -> str:
    p = metrics["provenance"]
    e = html.escape
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>Evaluation: {e(p['experiment'])}</title>"
             f"<style>{STYLE}</style></head><body><h1>Evaluation: {e(p['experiment'])}</h1>"]
    if p["caveat"]:
        parts.append(f"<p class='note'><b>Note.</b> {e(p['caveat'])}</p>")
    parts += ["<h2>Results (Table 1)</h2>", _html_table(*main_table(metrics))]
    agreement = metrics.get("expert", {}).get("agreement")
    if agreement:
        table = agreement_table(agreement, lambda s: display_name(metrics, s))
        parts += ["<h2>Judge–expert agreement</h2>", _html_table(*table),
                  "<ul>", *(f"<li>{e(line)}</li>" for line in agreement_notes(agreement)), "</ul>"]
    parts += ["<h2>Per structure</h2>", _html_table(*structure_table(metrics)),
              f"<img alt='LLM judge per structure' src='{_data_uri(chart)}'>",
              "<h2>Paired tests (Wilcoxon signed-rank)</h2><ul>",
              *(f"<li>{e(t['verdict'])}</li>" for t in metrics["tests"]), "</ul>",
              "<h2>Provenance</h2><ul>", *(f"<li>{e(line.replace('**', ''))}</li>" for line in provenance_lines(metrics)),
              "</ul><h2>Gallery</h2>"]
    for case in (c for c in metrics["cases"] if c["gallery"]):
        image = _data_uri((folder / case["gallery"]).read_bytes())
        answers = "".join(
            f"<p class='answer'><span class='score'>{e(model_label(m))} (judge {a['judge']:.2f}):</span> "
            f"{_html(a['answer'])}</p>" for m, a in case["answers"].items()
        )
        heading = e(case_heading(metrics, case))
        parts.append(f"<div class='case'><img alt='overlay: {heading}' src='{image}'><div>"
                     f"<h3>{heading}</h3><p><i>Prompt:</i> {_html(case['prompt'])}</p>"
                     f"<p><i>Reference:</i> {_html(case['reference'])}</p>{answers}</div></div>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _model_rank(name: str) -> tuple[int, int]:
    """Base, SFT, DPO, then the later rounds' DPO models in order (``dpo_r2`` …)."""
    order = {"base": 0, "sft": 1, "dpo": 2}
    return (order[name], 0) if name in order else (2, int(name.removeprefix("dpo_r") or 0))


def in_model_order(metrics: dict[str, Any]) -> dict[str, Any]:
    """``metrics`` with every per-model mapping in report order: ``metrics.json`` is written with sorted keys."""
    def ordered(by_model: dict[str, Any]) -> dict[str, Any]:
        return {m: by_model[m] for m in sorted(by_model, key=_model_rank)}

    cases = [{**c, "answers": ordered(c["answers"])} for c in metrics["cases"]]
    return {**metrics, "models": ordered(metrics["models"]), "cases": cases}


def write_report(folder: str | Path, metrics: dict[str, Any]) -> Path:
    """Write the chart, ``report.md`` and ``report.html`` from ``metrics`` into ``folder``."""
    folder, metrics = Path(folder), in_model_order(metrics)
    chart = bar_chart(metrics)
    atomic.write_bytes(folder / CHART_FILENAME, chart)
    atomic.write_text(folder / "report.md", render_markdown(metrics))
    atomic.write_text(folder / "report.html", render_html(metrics, folder, chart))
    return folder / "report.html"
