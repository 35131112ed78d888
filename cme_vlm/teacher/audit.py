"""``cme-vlm audit RUN_DIR``: check every logged outgoing request of a run against its dataset.

Each image part must hash to the 1-bit encoding of its own record's mask; no text may carry any
record's procedure or frame identifier or a file path; the API key may appear nowhere in the run.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from cme_vlm import atomic
from cme_vlm.data.records import load_dataset
from cme_vlm.errors import DataError, PrivacyError
from cme_vlm.layout import RunLayout
from cme_vlm.schema import ExperimentConfig
from cme_vlm.teacher.privacy import identifier_tokens, text_problems
from cme_vlm.teacher.request import RecordContext, encode_mask, mask_array

console = Console(stderr=True)
GOOGLE_KEY = re.compile(r"AIza[0-9A-Za-z_\-]{35}")
SCANNED_SUFFIXES = {".jsonl", ".json", ".yaml", ".yml", ".csv", ".html", ".md", ".txt", ".log"}
REPORT_NAME = "privacy_audit.json"


@dataclass
class FileVerdict:
    path: str
    lines: int = 0
    image_parts: int = 0
    violations: list[str] = field(default_factory=list)


def _records(run_dir: Path) -> tuple[dict[str, RecordContext], dict[str, str]]:
    """Each record's context and the SHA-256 of its mask's encoding, from the run's instruction dataset."""
    layout = RunLayout(run_dir)
    source = layout.data if layout.data.is_dir() else layout.teacher
    ds = load_dataset(source, f"dataset of run '{run_dir}'").select_columns(["id", "procedure", "frame", "mask"])
    contexts, digests = {}, {}
    for row in ds:
        ctx = RecordContext(row["id"], row["procedure"], row["frame"], mask_array(row["mask"]))
        contexts[ctx.record_id] = ctx
        digests[ctx.record_id] = hashlib.sha256(encode_mask(ctx.mask)).hexdigest()
    return contexts, digests


def _any_identifier(contexts: dict[str, RecordContext]) -> re.Pattern[str] | None:
    tokens = sorted({t for c in contexts.values() for t in identifier_tokens(c)}, key=len, reverse=True)
    if not tokens:
        return None
    return re.compile(r"(?<![A-Za-z0-9])(?:" + "|".join(map(re.escape, tokens)) + r")(?![A-Za-z0-9])", re.I)


def _check_line(line: dict, contexts: dict[str, RecordContext], digests: dict[str, str],
                anyid: re.Pattern[str] | None) -> list[str]:
    rid = line.get("record_id", "")
    problems = []
    parts = line.get("parts", [])
    if parts and rid not in digests:
        problems.append(f"record {rid!r} sent {len(parts)} image part(s) but is not in the dataset")
    for part in parts:
        if rid in digests and part.get("sha256") != digests[rid]:
            problems.append(f"record {rid}: an image part is not the encoding of its mask")
    text = str(line.get("text", ""))
    context = contexts.get(rid, RecordContext(rid, "", ""))
    problems += [f"record {rid}: {p}" for p in text_problems(text, context)]
    hit = anyid.search(text) if anyid else None
    if hit:
        problems.append(f"record {rid}: the text contains a local identifier '{hit.group(0)}'")
    return problems


def _key_leaks(run_dir: Path, key_env: str) -> list[str]:
    """Files of the run that hold the API key (the env var's value) or anything shaped like a Google key."""
    key = os.environ.get(key_env, "")
    leaks = []
    for path in sorted(p for p in run_dir.rglob("*") if p.is_file() and p.suffix in SCANNED_SUFFIXES):
        text = path.read_text(encoding="utf-8", errors="replace")
        if (len(key) >= 8 and key in text) or GOOGLE_KEY.search(text):
            leaks.append(f"{path.relative_to(run_dir)} contains an API key")
    return leaks


def audit_run(cfg: ExperimentConfig, run_dir: Path) -> dict:
    """Check every ``audit.jsonl`` of ``run_dir``; print a verdict table; ``PrivacyError`` on a violation."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DataError(f"run folder '{run_dir}' does not exist. Give a folder under {cfg.output_dir}/.")
    contexts, digests = _records(run_dir)
    anyid = _any_identifier(contexts)
    verdicts = []
    for path in sorted(run_dir.rglob("*audit.jsonl")):  # the teacher's, the pair judge's and the eval judge's
        verdict = FileVerdict(str(path.relative_to(run_dir)))
        for line in atomic.read_jsonl(path):
            verdict.lines += 1
            verdict.image_parts += len(line.get("parts", []))
            verdict.violations += _check_line(line, contexts, digests, anyid)
        verdicts.append(verdict)
    leaks = _key_leaks(run_dir, cfg.teacher.gemini.api_key_env)
    report = {
        "run": str(run_dir),
        "requests": sum(v.lines for v in verdicts),
        "image_parts": sum(v.image_parts for v in verdicts),
        "files": [v.__dict__ for v in verdicts],
        "key_leaks": leaks,
        "verdict": "pass" if not leaks and not any(v.violations for v in verdicts) else "fail",
    }
    atomic.write_json(run_dir / REPORT_NAME, report)
    _print(report)
    if report["verdict"] == "fail":
        first = leaks + [p for v in verdicts for p in v.violations]
        raise PrivacyError(
            f"privacy audit of '{run_dir}' failed with {len(first)} violation(s), e.g.:\n  - "
            + "\n  - ".join(first[:10])
            + f"\nSee {run_dir / REPORT_NAME}. Treat the logged requests as a disclosure and fix their source."
        )
    return report


def _print(report: dict) -> None:
    table = Table(title=f"privacy audit: {report['verdict'].upper()}")
    for column in ("audit log", "requests", "image parts", "violations"):
        table.add_column(column, justify="left" if column == "audit log" else "right")
    for f in report["files"]:
        table.add_row(f["path"], str(f["lines"]), str(f["image_parts"]), str(len(f["violations"])),
                      style="red" if f["violations"] else None)
    table.add_row("API key in run files", "", "", str(len(report["key_leaks"])),
                  style="red" if report["key_leaks"] else None)
    console.print(table)
    console.print(json.dumps({k: report[k] for k in ("requests", "image_parts", "verdict")}))
