"""Expert review of preference pairs: export a sheet (CSV + HTML), import approve / swap / reject.

The CSV's ``decision`` column takes ``approve``, ``swap`` (the judge had the pair the wrong way
round: accepted and rejected, their scores and reference log-probs trade places), ``reject``
(the pair leaves training) or stays empty. The whole sheet is checked before anything is
applied; the dataset is then rewritten atomically.
"""

from __future__ import annotations

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
from cme_vlm.preference.records import PREFERENCE_FEATURES
from cme_vlm.schema import ExperimentConfig
from cme_vlm.teacher.review import _overlay_uri

console = Console(stderr=True)
COLUMNS = ("id", "structure", "side", "phase", "prompt", "accepted", "rejected", "decision", "comment")
DECISIONS = {"approve": "expert_approved", "swap": "expert_swapped", "reject": "expert_rejected"}
SHEET_NAME = "review.csv"
SWAPPED = (("accepted", "rejected"), ("accepted_score", "rejected_score"), ("ref_logp_accepted", "ref_logp_rejected"))


def sample_pair_ids(ds: Dataset, fraction: float, seed: int) -> list[str]:
    """A seeded sample of judge-chosen pairs, at least one when any exists."""
    judged = [rid for rid, p in zip(ds["id"], ds["provenance"], strict=True) if p == "judge"]
    if not judged:
        return []
    return sorted(random.Random(seed).sample(judged, min(len(judged), max(1, round(fraction * len(judged))))))


def _html(rows: list[dict]) -> str:
    cards = [
        f"<section><h2>{html.escape(r['structure'])} · {html.escape(r['side'])}-sided · <code>{html.escape(r['id'])}</code>"
        f"</h2><img src=\"{_overlay_uri(r['overlay'])}\" alt=\"overlay\"><p><b>Prompt</b> {html.escape(r['prompt'])}</p>"
        f"<p><b>Accepted</b> {html.escape(r['accepted'])}</p><p><b>Rejected</b> {html.escape(r['rejected'])}</p></section>"
        for r in rows
    ]
    style = "body{font-family:sans-serif;max-width:60em;margin:auto}img{width:320px;image-rendering:pixelated}"
    return (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>Preference pair review</title>"
            f"<style>{style}</style></head><body><h1>Preference pair review ({len(rows)} pairs)</h1>"
            "<p>Fill the <code>decision</code> column of review.csv: approve, swap (accepted is worse) or reject.</p>"
            + "".join(cards) + "</body></html>\n")


def export_sheet(cfg: ExperimentConfig, dataset: Path, out: Path) -> Path:
    """Write ``out/review.csv`` and ``out/review.html`` for a seeded ``review.fraction`` sample of pairs."""
    ds = load_dataset(dataset, "preference dataset")
    ids = set(sample_pair_ids(ds, cfg.review.fraction, cfg.review.seed))
    if not ids:
        raise DataError(f"preference dataset '{dataset}' holds no judge-chosen pairs to review. "
                        "Run 'cme-vlm preference build' first.")
    rows = list(ds.filter(lambda rid: rid in ids, input_columns="id"))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS)
    writer.writeheader()
    for r in rows:
        writer.writerow({**{c: r.get(c, "") for c in COLUMNS}, "decision": "", "comment": ""})
    out = Path(out)
    atomic.write_text(out / SHEET_NAME, buf.getvalue())
    atomic.write_text(out / "review.html", _html(rows))
    save_config(cfg, out)
    console.print(f"pair review sheet for {len(rows)} of {len(ds)} pairs: {out / SHEET_NAME}")
    return out / SHEET_NAME


def read_pair_decisions(sheet: Path, known_ids: set[str]) -> dict[str, str]:
    """{pair id: new provenance} from a filled sheet; any bad row is a ``DataError`` and nothing applies."""
    try:
        reader = csv.DictReader(io.StringIO(Path(sheet).read_text(encoding="utf-8-sig")))
    except OSError as e:
        raise DataError(f"review sheet '{sheet}' cannot be read ({e}). Give the CSV from 'preference review-export'.") from e
    if not {"id", "decision"} <= set(reader.fieldnames or []):
        raise DataError(f"review sheet '{sheet}' lacks the id or decision column. Start from the exported sheet.")
    decisions: dict[str, str] = {}
    problems = []
    for line, row in enumerate(reader, start=2):
        rid, decision = (row.get("id") or "").strip(), (row.get("decision") or "").strip().lower()
        if rid not in known_ids:
            problems.append(f"row {line}: id '{rid}' is not in the dataset; keep the id column as exported")
        elif rid in decisions:
            problems.append(f"row {line}: id '{rid}' appears twice; keep one row per pair")
        elif decision and decision not in DECISIONS:
            problems.append(f"row {line}: decision '{decision}' is not one of approve, swap, reject (or empty)")
        elif decision:
            decisions[rid] = DECISIONS[decision]
    if problems:
        raise DataError(f"review sheet '{sheet}' has errors; nothing was applied:\n  - " + "\n  - ".join(problems))
    return decisions


def import_sheet(cfg: ExperimentConfig, sheet: Path, dataset: Path) -> Path:
    """Apply a filled sheet to the preference ``dataset`` (rewritten atomically)."""
    ds = load_dataset(dataset, "preference dataset")
    decisions = read_pair_decisions(sheet, set(ds["id"]))

    def apply(row: dict) -> dict:
        provenance = decisions.get(row["id"])
        if provenance is None:
            return row
        row = {**row, "provenance": provenance}
        if provenance == "expert_swapped":
            for a, b in SWAPPED:
                row[a], row[b] = row[b], row[a]
        return row

    updated = ds.map(apply, features=PREFERENCE_FEATURES, keep_in_memory=True, desc="applying pair review")
    folder = Path(dataset)
    target = save_dataset(updated, folder.parent if folder.name == DATASET_DIRNAME else folder)
    counts = {p: sum(v == p for v in decisions.values()) for p in DECISIONS.values()}
    console.print(f"pair review applied to {target}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return target
