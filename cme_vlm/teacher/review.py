"""Expert review of teacher answers: export a sheet (CSV + HTML), import approvals, edits, rejections.

The CSV's ``decision`` column takes ``approve``, ``edit`` (with ``edited_answer``), ``reject`` or
stays empty (not reviewed). An import checks the whole sheet first and applies nothing if any
row is wrong; the dataset is then rewritten atomically with each record's new provenance.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import random
from pathlib import Path

from datasets import Dataset
from rich.console import Console

from cme_vlm import atomic
from cme_vlm.config import save_config
from cme_vlm.data.records import DATASET_DIRNAME, load_dataset, save_dataset
from cme_vlm.errors import DataError
from cme_vlm.schema import ExperimentConfig

console = Console(stderr=True)
COLUMNS = ("id", "structure", "side", "phase", "prompt", "answer", "decision", "edited_answer", "comment")
DECISIONS = {"approve": "expert_approved", "edit": "expert_edited", "reject": "expert_rejected"}
SHEET_NAME = "review.csv"


def sample_ids(ds: Dataset, fraction: float, seed: int) -> list[str]:
    """A seeded sample of answered (``teacher``) records, at least one when any exists."""
    answered = [rid for rid, p in zip(ds["id"], ds["provenance"], strict=True) if p == "teacher"]
    if not answered:
        return []
    n = min(len(answered), max(1, round(fraction * len(answered))))
    return sorted(random.Random(seed).sample(answered, n))


def _overlay_uri(image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _html(rows: list[dict]) -> str:
    cards = []
    for r in rows:
        cards.append(
            f"<section><h2>{html.escape(r['structure'])} · {html.escape(r['side'])}-sided · "
            f"<code>{html.escape(r['id'])}</code></h2><img src=\"{_overlay_uri(r['overlay'])}\" alt=\"overlay\">"
            f"<p><b>Prompt</b> {html.escape(r['prompt'])}</p><p><b>Answer</b> {html.escape(r['answer'])}</p></section>"
        )
    style = "body{font-family:sans-serif;max-width:60em;margin:auto}img{width:320px;image-rendering:pixelated}"
    return (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>Teacher answer review</title>"
            f"<style>{style}</style></head><body><h1>Teacher answer review ({len(rows)} records)</h1>"
            "<p>Fill the <code>decision</code> column of review.csv: approve, edit (with edited_answer) or reject.</p>"
            + "".join(cards) + "</body></html>\n")


def export_sheet(cfg: ExperimentConfig, dataset: Path, out: Path) -> Path:
    """Write ``out/review.csv`` and ``out/review.html`` for a seeded ``review.fraction`` sample."""
    ds = load_dataset(dataset, "answered dataset")
    ids = set(sample_ids(ds, cfg.review.fraction, cfg.review.seed))
    if not ids:
        raise DataError(f"dataset '{dataset}' holds no teacher answers to review. Run 'cme-vlm teacher answer' first.")
    rows = [r for r in ds.filter(lambda rid: rid in ids, input_columns="id")]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS)
    writer.writeheader()
    for r in rows:
        writer.writerow({**{c: r.get(c, "") for c in COLUMNS}, "decision": "", "edited_answer": "", "comment": ""})
    out = Path(out)
    atomic.write_text(out / SHEET_NAME, buf.getvalue())
    atomic.write_text(out / "review.html", _html(rows))
    save_config(cfg, out)
    console.print(f"review sheet for {len(rows)} of {len(ds)} records: {out / SHEET_NAME} (view {out / 'review.html'})")
    return out / SHEET_NAME


def read_decisions(sheet: Path, known_ids: set[str]) -> dict[str, tuple[str, str]]:
    """{record id: (provenance, edited answer or "")} from a filled sheet; any bad row is a ``DataError``."""
    try:
        text = Path(sheet).read_text(encoding="utf-8-sig")
    except OSError as e:
        raise DataError(f"review sheet '{sheet}' cannot be read ({e}). Give the CSV written by 'review export'.") from e
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in ("id", "decision", "edited_answer") if c not in (reader.fieldnames or [])]
    if missing:
        raise DataError(f"review sheet '{sheet}' lacks the column(s) {', '.join(missing)}. Start from the exported sheet.")
    decisions: dict[str, tuple[str, str]] = {}
    problems = []
    for line, row in enumerate(reader, start=2):  # line 1 is the header
        rid, decision = (row.get("id") or "").strip(), (row.get("decision") or "").strip().lower()
        edited = (row.get("edited_answer") or "").strip()
        if rid not in known_ids:
            problems.append(f"row {line}: id '{rid}' is not in the dataset; keep the id column as exported")
        elif rid in decisions:
            problems.append(f"row {line}: id '{rid}' appears twice; keep one row per record")
        elif decision and decision not in DECISIONS:
            problems.append(f"row {line}: decision '{decision}' is not one of approve, edit, reject (or empty)")
        elif decision == "edit" and not edited:
            problems.append(f"row {line}: decision 'edit' needs the corrected text in edited_answer")
        elif decision:
            decisions[rid] = (DECISIONS[decision], edited if decision == "edit" else "")
    if problems:
        raise DataError(f"review sheet '{sheet}' has errors; nothing was applied:\n  - " + "\n  - ".join(problems))
    return decisions


def import_sheet(cfg: ExperimentConfig, sheet: Path, dataset: Path) -> Path:
    """Apply a filled sheet to ``dataset`` (rewritten atomically); rejected records leave training."""
    ds = load_dataset(dataset, "answered dataset")
    decisions = read_decisions(sheet, set(ds["id"]))

    def apply(row: dict) -> dict:
        decided = decisions.get(row["id"])
        if decided is None:
            return row
        provenance, edited = decided
        return {**row, "provenance": provenance, "answer": edited or row["answer"]}

    updated = ds.map(apply, features=ds.features, keep_in_memory=True, desc="applying review")
    folder = Path(dataset)
    folder = folder.parent if folder.name == DATASET_DIRNAME else folder
    target = save_dataset(updated, folder)
    counts = {p: sum(1 for v, _ in decisions.values() if v == p) for p in DECISIONS.values()}
    console.print(f"review applied to {target}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return target
