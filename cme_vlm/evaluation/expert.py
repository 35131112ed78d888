"""The blinded expert evaluation: export a sheet of N cases, import the expert's scores and preferences.

The sheet shows each case's overlay image, prompt and the models' answers in a shuffled order
under neutral labels (A, B, C); which label is which model is kept in ``expert/key.json``,
apart from the sheet. The imported 1–5 scores and preferred-model choices (several allowed)
become the report's "Expert score" and "Preferred model (count)" rows.
"""

from __future__ import annotations

import csv
import io
import json
import random
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

from cme_vlm import atomic
from cme_vlm.data.records import load_dataset
from cme_vlm.errors import DataError
from cme_vlm.evaluation.metrics import summarise
from cme_vlm.evaluation.report import METRICS_FILENAME, read_metrics, write_report
from cme_vlm.schema import ExperimentConfig

EXPERT_DIRNAME = "expert"
SHEET_FILENAME = "sheet.csv"
KEY_FILENAME = "key.json"
LABELS = "ABCDEFGH"


def _columns(labels: str) -> list[str]:
    return ["case", "structure", "side", "prompt", "image", *(f"answer_{x}" for x in labels),
            *(f"score_{x}" for x in labels), "preferred", "comment"]


def _save_images(metrics: dict[str, Any], chosen: list[dict[str, Any]], folder: Path) -> None:
    ids = {c["id"]: f"case-{i + 1:02d}" for i, c in enumerate(chosen)}
    ds = load_dataset(metrics["provenance"]["data"]["dataset"], "the evaluated dataset")
    for row in ds.filter(lambda rid: rid in ids, input_columns="id"):
        buf = io.BytesIO()
        row["overlay"].convert("RGB").save(buf, format="PNG")
        atomic.write_bytes(folder / "images" / f"{ids[row['id']]}.png", buf.getvalue())


def export_sheet(cfg: ExperimentConfig, eval_dir: Path) -> Path:
    """Write ``expert/sheet.csv`` (blinded), ``expert/images/`` and ``expert/key.json`` into ``eval_dir``."""
    eval_dir = Path(eval_dir)
    metrics = read_metrics(eval_dir)
    models = list(metrics["models"])
    rng = random.Random(cfg.eval.seed)
    cases = metrics["cases"]
    chosen = sorted(rng.sample(cases, min(cfg.eval.expert_cases, len(cases))), key=lambda c: c["id"])
    labels = LABELS[: len(models)]
    rows, key = [], {}
    for i, case in enumerate(chosen):
        name = f"case-{i + 1:02d}"
        order = rng.sample(models, len(models))
        key[name] = {"id": case["id"], "labels": dict(zip(labels, order, strict=True))}
        rows.append({"case": name, "structure": case["structure"].replace("_", " "), "side": case["side"],
                     "prompt": case["prompt"], "image": f"images/{name}.png",
                     **{f"answer_{x}": case["answers"][m]["answer"] for x, m in zip(labels, order, strict=True)},
                     **{f"score_{x}": "" for x in labels}, "preferred": "", "comment": ""})
    folder = eval_dir / EXPERT_DIRNAME
    _save_images(metrics, chosen, folder)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=_columns(labels))
    writer.writeheader()
    writer.writerows(rows)
    atomic.write_text(folder / SHEET_FILENAME, buf.getvalue())
    atomic.write_json(folder / KEY_FILENAME, key)
    return folder / SHEET_FILENAME


def _parse_row(n: int, row: dict[str, str], key: dict[str, Any], problems: list[str]) -> tuple[dict, list] | None:
    case = row.get("case", "")
    if case not in key:
        problems.append(f"row {n}: unknown case '{case}' (not in {KEY_FILENAME}); do not edit the case column")
        return None
    labels = key[case]["labels"]
    scores = {}
    for label, model in labels.items():
        raw = (row.get(f"score_{label}") or "").strip()
        if not re.fullmatch(r"[1-5]", raw):
            problems.append(f"row {n} ({case}): score_{label}='{raw}' must be a whole number from 1 to 5")
        else:
            scores[model] = int(raw)
    chosen = [x for x in re.split(r"[\s,;]+", (row.get("preferred") or "").strip().upper()) if x]
    bad = [x for x in chosen if x not in labels]
    if bad:
        problems.append(f"row {n} ({case}): preferred '{row.get('preferred')}' names {bad}; use labels among "
                        f"{', '.join(labels)}, separated by ';'")
    return scores, [labels[x] for x in chosen if x in labels]


def import_sheet(cfg: ExperimentConfig, sheet: Path, eval_dir: Path) -> dict[str, Any]:
    """Fold a filled sheet into ``metrics.json`` and the report; a malformed sheet changes nothing."""
    eval_dir, sheet = Path(eval_dir), Path(sheet)
    key_path = eval_dir / EXPERT_DIRNAME / KEY_FILENAME
    if not key_path.is_file() or not sheet.is_file():
        missing = key_path if not key_path.is_file() else sheet
        raise DataError(f"'{missing}' does not exist. Export the sheet first (cme-vlm expert export) and fill it in.")
    key = json.loads(key_path.read_text())
    metrics = read_metrics(eval_dir)
    problems: list[str] = []
    scores: dict[str, list[float]] = {m: [] for m in metrics["models"]}
    preferred = {m: 0 for m in metrics["models"]}
    rows = list(csv.DictReader(io.StringIO(sheet.read_text(encoding="utf-8-sig"))))
    seen = set()
    for n, row in enumerate(rows, start=2):  # row 1 is the header
        if row.get("case") in seen:
            problems.append(f"row {n}: case '{row.get('case')}' appears twice")
        seen.add(row.get("case"))
        parsed = _parse_row(n, row, key, problems)
        if parsed:
            for model, s in parsed[0].items():
                scores.setdefault(model, []).append(float(s))
            for model in parsed[1]:
                preferred[model] = preferred.get(model, 0) + 1
    if not rows:
        problems.append("the sheet has no rows")
    if problems:
        raise DataError(f"expert sheet '{sheet}' has {len(problems)} problem(s); nothing was applied. Fix them and "
                        "import again:\n  - " + "\n  - ".join(problems[:30]))
    metrics["expert"] = {"n_cases": len(rows), "sheet": str(sheet),
                         "scores": {m: asdict(summarise(v)) for m, v in scores.items()}, "preferred": preferred}
    atomic.write_json(eval_dir / METRICS_FILENAME, metrics)
    write_report(eval_dir, metrics)
    return metrics["expert"]
