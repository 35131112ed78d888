"""The blinded expert evaluation: export a sheet of N cases, serve it as a web form, import the scores.

The sheet shows each case's overlay image, prompt and the models' answers in a shuffled order
under neutral labels (A, B, C). The folder ``expert/`` (sheet and images) is what goes to the
expert; which label is which model is kept outside it, in ``expert-key.json`` beside it (a key
that an earlier version wrote into ``expert/key.json`` is still found). The expert fills the CSV,
or the local web form that saves into it
(``serve_sheet``). The imported 1–5 scores and preferred-model choices (several allowed)
become the report's "Expert score" and "Preferred model (count)" rows, and the judge's
agreement with them (``cme_vlm.evaluation.agreement``) its "Judge–expert agreement" section.
"""

from __future__ import annotations

import csv
import io
import json
import random
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from cme_vlm import atomic, review_server
from cme_vlm.data.records import load_dataset
from cme_vlm.errors import DataError
from cme_vlm.evaluation.agreement import RatedCase, judge_expert_agreement
from cme_vlm.evaluation.report import METRICS_FILENAME, display_name, read_metrics, write_report
from cme_vlm.evaluation.tracking import log_evaluation
from cme_vlm.review_server import Field, SheetForm, Shown
from cme_vlm.review_sheet import png_bytes
from cme_vlm.schema import ExperimentConfig
from cme_vlm.scoring.metrics import summarise

EXPERT_DIRNAME = "expert"  # the folder handed to the expert
SHEET_FILENAME = "sheet.csv"
KEY_FILENAME = "expert-key.json"  # beside EXPERT_DIRNAME, never inside it
LEGACY_KEY = f"{EXPERT_DIRNAME}/key.json"  # where earlier versions wrote the key
LABELS = "ABCDEFGH"
SCORED = ("score_", "preferred", "comment")  # the columns the expert fills

console = Console(stderr=True)


def _columns(labels: str) -> list[str]:
    return ["case", "structure", "side", "prompt", "image", *(f"answer_{x}" for x in labels),
            *(f"score_{x}" for x in labels), "preferred", "comment"]


def _save_images(metrics: dict[str, Any], chosen: list[dict[str, Any]], folder: Path) -> None:
    ids = {c["id"]: f"case-{i + 1:02d}" for i, c in enumerate(chosen)}
    ds = load_dataset(metrics["provenance"]["data"]["dataset"], "the evaluated dataset")
    for row in ds.filter(lambda rid: rid in ids, input_columns="id"):
        atomic.write_bytes(folder / "images" / f"{ids[row['id']]}.png", png_bytes(row["overlay"].convert("RGB")))


def key_path(eval_dir: Path) -> Path:
    """Where ``eval_dir``'s key is: beside the expert folder, or inside it as an earlier version wrote it."""
    key, legacy = Path(eval_dir) / KEY_FILENAME, Path(eval_dir) / LEGACY_KEY
    return legacy if legacy.is_file() and not key.is_file() else key


def _filled_rows(sheet: Path) -> int:
    """How many rows of an existing sheet hold any of the expert's entries."""
    if not sheet.is_file():
        return 0
    rows = csv.DictReader(io.StringIO(sheet.read_text(encoding="utf-8-sig")))
    return sum(any((v or "").strip() for k, v in row.items() if k and k.startswith(SCORED)) for row in rows)


def export_sheet(cfg: ExperimentConfig, eval_dir: Path) -> Path:
    """Write ``expert/sheet.csv`` (blinded) and ``expert/images/`` into ``eval_dir``, the key beside them.

    A sheet that already holds an expert's entries is never replaced.
    """
    eval_dir = Path(eval_dir)
    folder = eval_dir / EXPERT_DIRNAME
    filled = _filled_rows(folder / SHEET_FILENAME)
    if filled:
        raise DataError(f"expert sheet '{folder / SHEET_FILENAME}' already holds {filled} filled case(s). Import it "
                        f"(cme-vlm expert import --sheet {folder / SHEET_FILENAME} --eval-dir {eval_dir}), or move it "
                        "away to export a new one.")
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
        rows.append({"case": name, "structure": display_name(metrics, case["structure"]), "side": case["side"],
                     "prompt": case["prompt"], "image": f"images/{name}.png",
                     **{f"answer_{x}": case["answers"][m]["answer"] for x, m in zip(labels, order, strict=True)},
                     **{f"score_{x}": "" for x in labels}, "preferred": "", "comment": ""})
    _save_images(metrics, chosen, folder)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=_columns(labels))
    writer.writeheader()
    writer.writerows(rows)
    atomic.write_text(folder / SHEET_FILENAME, buf.getvalue())
    atomic.write_json(eval_dir / KEY_FILENAME, key)
    (eval_dir / LEGACY_KEY).unlink(missing_ok=True)  # the key of the empty sheet just replaced; it must not travel
    console.print(f"expert sheet of {len(rows)} cases: {folder / SHEET_FILENAME}, overlays in {folder / 'images'}. "
                  f"Hand the folder {folder} to the expert (or serve it: cme-vlm expert serve). The key, which model "
                  f"wrote which answer, stays apart in {eval_dir / KEY_FILENAME}: keep it back.", soft_wrap=True)
    return folder / SHEET_FILENAME


@dataclass(frozen=True)
class Rating:
    """One filled row, unblinded: the expert's 1–5 score per model and the model(s) preferred."""

    scores: dict[str, int]
    preferred: frozenset[str]


def _parse_row(n: int, row: dict[str, str], key: dict[str, Any], problems: list[str]) -> Rating | None:
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
    return Rating(scores, frozenset(labels[x] for x in chosen if x in labels))


def _read_key(eval_dir: Path, sheet: Path) -> dict[str, Any]:
    key = key_path(eval_dir)
    if not key.is_file() or not sheet.is_file():
        missing = key if not key.is_file() else sheet
        raise DataError(f"'{missing}' does not exist. Export the sheet first (cme-vlm expert export) and fill it in.")
    return json.loads(key.read_text())


def read_sheet(sheet: Path, key: dict[str, Any]) -> dict[str, Rating]:
    """{case: Rating} of a filled sheet; any bad row is one ``DataError`` listing every problem."""
    ratings, problems = _rate(sheet, key)
    if problems:
        raise DataError(f"expert sheet '{sheet}' has {len(problems)} problem(s); nothing was applied. Fix them and "
                        "import again:\n  - " + "\n  - ".join(problems[:30]))
    return ratings


def _check_form(sheet: Path, key: dict[str, Any]) -> None:
    """The web form's final check: what the import would refuse, worded for a sheet not yet imported."""
    _, problems = _rate(sheet, key)
    if problems:
        raise DataError(f"Before it can be imported: {len(problems)} problem(s):\n  - " + "\n  - ".join(problems[:30]))


def _rate(sheet: Path, key: dict[str, Any]) -> tuple[dict[str, Rating], list[str]]:
    """The sheet's ratings by case, and every problem found in it."""
    problems: list[str] = []
    ratings: dict[str, Rating] = {}
    rows = list(csv.DictReader(io.StringIO(Path(sheet).read_text(encoding="utf-8-sig"))))
    seen: set[str] = set()
    for n, row in enumerate(rows, start=2):  # row 1 is the header
        case = row.get("case", "")
        if case in seen:
            problems.append(f"row {n}: case '{case}' appears twice")
        seen.add(case)
        rating = _parse_row(n, row, key, problems)
        if rating:
            ratings[case] = rating
    if not rows:
        problems.append("the sheet has no rows")
    return ratings, problems


def _rated_cases(metrics: dict[str, Any], key: dict[str, Any], ratings: dict[str, Rating]) -> list[RatedCase]:
    """Each rated case with the judge's composite per model, from the evaluation the sheet was exported from."""
    cases = {c["id"]: c for c in metrics["cases"]}
    rated = []
    for name, rating in ratings.items():
        case = cases.get(key[name]["id"])
        if case is None or not set(rating.scores) <= set(case["answers"]):
            raise DataError(f"sheet case '{name}' is not in {METRICS_FILENAME} as exported (was `evaluate` re-run "
                            "since?). Export the sheet again (cme-vlm expert export) and fill it in.")
        rated.append(RatedCase(structure=case["structure"],
                               judge={m: float(case["answers"][m]["judge"]) for m in rating.scores},
                               expert={m: float(s) for m, s in rating.scores.items()},
                               preferred=rating.preferred))
    return rated


def judge_criteria(metrics: dict[str, Any]) -> list[str]:
    """The judge's scores besides its composite: clinical, conciseness and every per-criterion score."""
    criteria = (k for c in metrics["cases"] for a in c["answers"].values() for k in a["verdicts"]["criteria"])
    return list(dict.fromkeys(("clinical", "conciseness", *criteria)))


def import_sheet(cfg: ExperimentConfig, sheet: Path, eval_dir: Path) -> dict[str, Any]:
    """Fold a filled sheet into ``metrics.json``, the report and a new W&B eval run; a bad sheet changes nothing."""
    eval_dir, sheet = Path(eval_dir), Path(sheet)
    key = _read_key(eval_dir, sheet)
    metrics = read_metrics(eval_dir)
    ratings = read_sheet(sheet, key)
    agreement = judge_expert_agreement(_rated_cases(metrics, key, ratings), judge_criteria(metrics), cfg.eval.seed)
    models = metrics["models"]
    metrics["expert"] = {
        "n_cases": len(ratings),
        "sheet": str(sheet),
        "scores": {m: asdict(summarise([float(r.scores[m]) for r in ratings.values() if m in r.scores]))
                   for m in models},
        "preferred": {m: sum(m in r.preferred for r in ratings.values()) for m in models},
        "agreement": agreement,
    }
    atomic.write_json(eval_dir / METRICS_FILENAME, metrics)
    write_report(eval_dir, metrics)
    log_evaluation(cfg, eval_dir, metrics)
    return metrics["expert"]


def sheet_form(eval_dir: Path) -> SheetForm:
    """The web form of the exported blinded sheet in ``eval_dir/expert``."""
    eval_dir = Path(eval_dir)
    folder = eval_dir / EXPERT_DIRNAME
    sheet = folder / SHEET_FILENAME
    key = _read_key(eval_dir, sheet)
    labels = list(next(iter(key.values()))["labels"]) if key else []
    answers = (item for x in labels for item in (
        Shown(f"Answer {x}", f"answer_{x}"),
        Field(f"score_{x}", f"Score of answer {x} (1 worst, 5 best)", options=("1", "2", "3", "4", "5"), required=True),
    ))
    return SheetForm(
        title="Blinded expert evaluation",
        instruction="Score each answer from 1 (worst) to 5 (best) and tick the answer(s) you prefer.",
        sheet=sheet,
        key_column="case",
        heading=("case", "structure", "side"),
        items=(Shown("Prompt", "prompt"), *answers, Field("preferred", "Preferred answer(s)", options=tuple(labels),
                                                          multiple=True), Field("comment", "Comment")),
        image=lambda row: _image(folder, row["image"]),
        check=lambda: _check_form(sheet, key),
        done=f"Import it with: cme-vlm expert import --sheet {sheet} --eval-dir {eval_dir}",
    )


def _image(folder: Path, relative: str) -> bytes | None:
    """The overlay a sheet row names, only from inside the sheet's folder."""
    path = (folder / relative).resolve()
    return path.read_bytes() if path.is_relative_to(folder.resolve()) and path.is_file() else None


def serve_sheet(cfg: ExperimentConfig, eval_dir: Path, host: str = "127.0.0.1", port: int = 0,
                allow_remote: bool = False) -> Path:
    """Serve the exported blinded sheet as a local web form until Ctrl-C; each entry is saved into it as made."""
    return review_server.serve(sheet_form(eval_dir), host, port, allow_remote)
