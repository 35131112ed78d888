"""The expert review round trip shared by teacher answers and preference pairs.

A seeded sample of reviewable rows goes out as ``review.csv`` plus a self-contained
``review.html`` (overlays inlined as data URIs); the filled CSV comes back, is checked whole
(unknown id, repeated id, unknown decision, the spec's own row check: one ``DataError`` listing
every bad row, nothing applied), and the dataset is rewritten atomically with the new provenances.
What differs between the two reviews lives in a ``SheetSpec`` and an ``apply`` callback.
``serve_sheet`` offers the exported CSV as a local web form (``cme_vlm.review_server``) instead
of a spreadsheet to edit.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from datasets import Dataset
from rich.console import Console

from cme_vlm import atomic, review_server
from cme_vlm.config import save_config
from cme_vlm.data.records import DATASET_DIRNAME, load_dataset, save_dataset
from cme_vlm.errors import DataError
from cme_vlm.review_server import Field, SheetForm, Shown
from cme_vlm.schema import ExperimentConfig

console = Console(stderr=True)
SHEET_NAME = "review.csv"
PAGE_NAME = "review.html"
_STYLE = "body{font-family:sans-serif;max-width:60em;margin:auto}img{width:320px;image-rendering:pixelated}"


class Decision(NamedTuple):
    """One filled row: the provenance its decision gives, and the row's cells as read."""

    provenance: str
    cells: dict[str, str]


@dataclass(frozen=True)
class SheetSpec:
    """What one kind of review shows, accepts and names in its messages."""

    title: str  # page heading, e.g. "Teacher answer review"
    unit: str  # singular name of a reviewed row, e.g. "record"
    what: str  # the dataset as named in errors, e.g. "answered dataset"
    data_columns: tuple[str, ...]  # copied from the dataset into the CSV
    review_columns: tuple[str, ...]  # left blank for the expert; all but "comment" are required
    decisions: Mapping[str, str]  # decision word -> provenance it sets
    reviewable: str  # provenance of the rows that may be sampled
    nothing_to_review: str  # e.g. "teacher answers"
    producer: str  # command that makes reviewable rows, e.g. "cme-vlm teacher answer"
    shown: tuple[tuple[str, str], ...]  # (label, column) text fields on each HTML card
    instruction: str  # how to fill the decision column, after "review.csv: "
    export_command: str  # named when a sheet cannot be read, e.g. "review export"
    import_command: str  # named when a served sheet is complete, e.g. "review import"
    row_check: Callable[[str, dict[str, str]], str] | None = None  # (decision, cells) -> problem or ""

    @property
    def columns(self) -> tuple[str, ...]:
        return self.data_columns + self.review_columns

    @property
    def required(self) -> tuple[str, ...]:
        return ("id", *(c for c in self.review_columns if c != "comment"))


def sample_ids(ds: Dataset, spec: SheetSpec, fraction: float, seed: int) -> list[str]:
    """A seeded sample of ``spec.reviewable`` rows, at least one when any exists."""
    pool = [rid for rid, p in zip(ds["id"], ds["provenance"], strict=True) if p == spec.reviewable]
    if not pool:
        return []
    n = min(len(pool), max(1, round(fraction * len(pool))))
    return sorted(random.Random(seed).sample(pool, n))


def png_bytes(image) -> bytes:
    """A PIL image encoded as PNG."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def overlay_uri(image) -> str:
    """A PIL image as a PNG data URI, so the page needs no file beside it."""
    return "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode("ascii")


def render_html(spec: SheetSpec, rows: list[dict]) -> str:
    """The self-contained review page: one card per row with its overlay and text fields."""
    cards = [
        f"<section><h2>{html.escape(r['structure'])} · {html.escape(r['side'])}-sided · "
        f"<code>{html.escape(r['id'])}</code></h2><img src=\"{overlay_uri(r['overlay'])}\" alt=\"overlay\">"
        + "".join(f"<p><b>{label}</b> {html.escape(r[col])}</p>" for label, col in spec.shown)
        + "</section>"
        for r in rows
    ]
    return (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>{spec.title}</title>"
            f"<style>{_STYLE}</style></head><body><h1>{spec.title} ({len(rows)} {spec.unit}s)</h1>"
            f"<p>Fill the <code>decision</code> column of {SHEET_NAME}: {spec.instruction}</p>"
            + "".join(cards) + "</body></html>\n")


def filled_rows(spec: SheetSpec, sheet: Path) -> int:
    """How many rows of an existing sheet hold any of the reviewer's entries (0 for no sheet)."""
    if not Path(sheet).is_file():
        return 0
    return sum(any((row.get(c) or "").strip() for c in spec.review_columns) for row in _reader(spec, sheet))


def export_sheet(spec: SheetSpec, cfg: ExperimentConfig, dataset: Path, out: Path) -> Path:
    """Write ``out/review.csv`` and ``out/review.html`` for a seeded ``review.fraction`` sample.

    A sheet that already holds a reviewer's entries is never replaced.
    """
    out = Path(out)
    filled = filled_rows(spec, out / SHEET_NAME)
    if filled:
        raise DataError(f"review sheet '{out / SHEET_NAME}' already holds {filled} reviewed {spec.unit}(s). Import it "
                        f"(cme-vlm {spec.import_command} --sheet {out / SHEET_NAME}), or move it away to export a "
                        "new one.")
    ds = load_dataset(dataset, spec.what)
    ids = set(sample_ids(ds, spec, cfg.review.fraction, cfg.review.seed))
    if not ids:
        raise DataError(f"{spec.what} '{dataset}' holds no {spec.nothing_to_review} to review. "
                        f"Run '{spec.producer}' first.")
    rows = list(ds.filter(lambda rid: rid in ids, input_columns="id"))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=spec.columns)
    writer.writeheader()
    for r in rows:
        writer.writerow({**{c: r.get(c, "") for c in spec.data_columns}, **dict.fromkeys(spec.review_columns, "")})
    atomic.write_text(out / SHEET_NAME, buf.getvalue())
    atomic.write_text(out / PAGE_NAME, render_html(spec, rows))
    save_config(cfg, out)
    console.print(f"review sheet for {len(rows)} of {len(ds)} {spec.unit}s: {out / SHEET_NAME} "
                  f"(view {out / PAGE_NAME})")
    return out / SHEET_NAME


def _reader(spec: SheetSpec, sheet: Path) -> csv.DictReader:
    try:
        text = Path(sheet).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"review sheet '{sheet}' cannot be read ({e}). "
                        f"Give the CSV written by 'cme-vlm {spec.export_command}'.") from e
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in spec.required if c not in (reader.fieldnames or [])]
    if missing:
        raise DataError(f"review sheet '{sheet}' lacks the column(s) {', '.join(missing)}. "
                        "Start from the exported sheet.")
    return reader


def _problem(spec: SheetSpec, rid: str, decision: str, cells: dict[str, str], known: set[str],
             seen: set[str]) -> str:
    if rid not in known:
        return f"id '{rid}' is not in the dataset; keep the id column as exported"
    if rid in seen:
        return f"id '{rid}' appears twice; keep one row per {spec.unit}"
    if decision and decision not in spec.decisions:
        return f"decision '{decision}' is not one of {', '.join(spec.decisions)} (or empty)"
    return spec.row_check(decision, cells) if spec.row_check and decision else ""


def read_decisions(spec: SheetSpec, sheet: Path, known_ids: set[str]) -> dict[str, Decision]:
    """{row id: Decision} for the rows with a decision; any bad row is one ``DataError`` listing them all."""
    decisions: dict[str, Decision] = {}
    seen: set[str] = set()
    problems = []
    for line, row in enumerate(_reader(spec, sheet), start=2):  # line 1 is the header
        cells = {k: (v or "").strip() for k, v in row.items() if k is not None}
        rid, decision = cells.get("id", ""), cells.get("decision", "").lower()
        problem = _problem(spec, rid, decision, cells, known_ids, seen)
        seen.add(rid)
        if problem:
            problems.append(f"row {line}: {problem}")
        elif decision:
            decisions[rid] = Decision(spec.decisions[decision], cells)
    if problems:
        raise DataError(f"review sheet '{sheet}' has errors; nothing was applied:\n  - " + "\n  - ".join(problems))
    return decisions


def import_sheet(spec: SheetSpec, sheet: Path, dataset: Path, apply: Callable[[dict, Decision], dict]) -> Path:
    """Apply a filled sheet to ``dataset`` (rewritten atomically); ``apply`` adds the row-specific change."""
    ds = load_dataset(dataset, spec.what)
    decisions = read_decisions(spec, sheet, set(ds["id"]))

    def update(row: dict) -> dict:
        decided = decisions.get(row["id"])
        return row if decided is None else apply({**row, "provenance": decided.provenance}, decided)

    updated = ds.map(update, features=ds.features, keep_in_memory=True, desc=f"applying {spec.unit} review")
    folder = Path(dataset)
    target = save_dataset(updated, folder.parent if folder.name == DATASET_DIRNAME else folder)
    counts = {p: sum(d.provenance == p for d in decisions.values()) for p in spec.decisions.values()}
    console.print(f"review applied to {target}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return target


def sheet_form(spec: SheetSpec, sheet: Path, dataset: Path) -> SheetForm:
    """The web form of an exported sheet: each card shows the row's overlay from ``dataset``."""
    sheet = Path(sheet)
    ds = load_dataset(dataset, spec.what)
    known = set(ds["id"])
    ids = {r["id"] for r in _reader(spec, sheet)}
    overlays = {r["id"]: png_bytes(r["overlay"]) for r in ds.filter(lambda rid: rid in ids, input_columns="id")}
    inputs = tuple(
        Field(c, "Decision", options=tuple(spec.decisions), required=True) if c == "decision"
        else Field(c, c.replace("_", " ").capitalize())
        for c in spec.review_columns
    )
    return SheetForm(
        title=spec.title,
        instruction=f"For each {spec.unit}: {spec.instruction}",
        sheet=sheet,
        key_column="id",
        heading=tuple(c for c in ("structure", "side", "id") if c in spec.data_columns),
        items=(*(Shown(label, column) for label, column in spec.shown), *inputs),
        image=lambda row: overlays.get(row["id"]),
        check=lambda: read_decisions(spec, sheet, known),
        done=f"Apply it with: cme-vlm {spec.import_command} --sheet {sheet} --dataset {dataset}",
    )


def serve_sheet(spec: SheetSpec, sheet: Path, dataset: Path, host: str, port: int, allow_remote: bool) -> Path:
    """Serve an exported sheet as a local web form until Ctrl-C; entries go into ``sheet`` as they are made."""
    return review_server.serve(sheet_form(spec, sheet, dataset), host, port, allow_remote)
