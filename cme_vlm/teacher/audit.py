"""``cme-vlm audit RUN_DIR``: check every logged outgoing request of a run against its dataset.

Every audit log of the run is read whole, every section of every run that appended to it: the
teacher's and the pair judge's ``audit.jsonl`` and the evaluation judge's ``judge_audit.jsonl``.
Each line must be a section header or a request line as ``AuditLog`` writes them; each request's
text must match its logged hash; each image part must hash to the 1-bit encoding of its own
record's mask; no text may carry any record's procedure or frame identifier or a file path; the
API key may appear nowhere in the run.
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
from cme_vlm.schema import ExperimentConfig
from cme_vlm.teacher.privacy import (
    REQUEST_FIELDS,
    SECTION_FIELDS,
    SECTION_KEY,
    identifier_tokens,
    text_problems,
)
from cme_vlm.teacher.request import RecordContext, encode_mask, mask_array

console = Console(stderr=True)
GOOGLE_KEY = re.compile(r"AIza[0-9A-Za-z_\-]{35}")
SCANNED_SUFFIXES = {".jsonl", ".json", ".yaml", ".yml", ".csv", ".html", ".md", ".txt", ".log"}
REPORT_NAME = "privacy_audit.json"


@dataclass
class FileVerdict:
    """One audit log: requests (lines), the sections the runs appended, image parts, violations."""

    path: str
    lines: int = 0
    sections: int = 0
    image_parts: int = 0
    violations: list[str] = field(default_factory=list)


def _records(dataset: Path) -> tuple[dict[str, RecordContext], dict[str, str]]:
    """Each record's context and the SHA-256 of its mask's encoding, from the run's instruction dataset."""
    ds = load_dataset(dataset, "the run's instruction dataset").select_columns(["id", "procedure", "frame", "mask"])
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


def _check_request(line: dict, contexts: dict[str, RecordContext], digests: dict[str, str],
                   anyid: re.Pattern[str] | None) -> list[str]:
    rid = line.get("record_id", "")
    problems = []
    if set(line) != REQUEST_FIELDS:
        problems.append(f"record {rid!r}: the line has fields {sorted(line)}, not those of a logged request")
    parts = line.get("parts", [])
    if parts and rid not in digests:
        problems.append(f"record {rid!r} sent {len(parts)} image part(s) but is not in the dataset")
    for part in parts:
        if rid in digests and part.get("sha256") != digests[rid]:
            problems.append(f"record {rid}: an image part is not the encoding of its mask")
    text = str(line.get("text", ""))
    if hashlib.sha256(text.encode()).hexdigest() != line.get("text_sha256"):
        problems.append(f"record {rid}: the logged text does not match its logged hash")
    context = contexts.get(rid, RecordContext(rid, "", ""))
    problems += [f"record {rid}: {p}" for p in text_problems(text, context)]
    hit = anyid.search(text) if anyid else None
    if hit:
        problems.append(f"record {rid}: the text contains a local identifier '{hit.group(0)}'")
    return problems


def _is_section_header(line: dict) -> bool:
    return set(line) == {SECTION_KEY} and isinstance(line[SECTION_KEY], dict) and set(line[SECTION_KEY]) == SECTION_FIELDS


def _check_file(path: Path, run_dir: Path, contexts: dict[str, RecordContext], digests: dict[str, str],
                anyid: re.Pattern[str] | None) -> FileVerdict:
    """Every line of one audit log, section headers included (lines before the first header come from older code)."""
    verdict = FileVerdict(str(path.relative_to(run_dir)))
    for number, line in enumerate(atomic.read_jsonl(path), start=1):
        if SECTION_KEY in line:
            verdict.sections += 1
            if not _is_section_header(line):
                verdict.violations.append(f"{verdict.path} line {number}: a malformed section header")
            continue
        verdict.lines += 1
        verdict.image_parts += len(line.get("parts", []))
        verdict.violations += [f"{verdict.path} line {number}: {p}" for p in _check_request(line, contexts, digests, anyid)]
    return verdict


def _key_leaks(run_dir: Path, key_env: str) -> list[str]:
    """Files of the run that hold the API key (the env var's value) or anything shaped like a Google key."""
    key = os.environ.get(key_env, "")
    leaks = []
    for path in sorted(p for p in run_dir.rglob("*") if p.is_file() and p.suffix in SCANNED_SUFFIXES):
        text = path.read_text(encoding="utf-8", errors="replace")
        if (len(key) >= 8 and key in text) or GOOGLE_KEY.search(text):
            leaks.append(f"{path.relative_to(run_dir)} contains an API key")
    return leaks


def audit_run(cfg: ExperimentConfig, run_dir: Path, dataset: Path) -> dict:
    """Check every ``*audit.jsonl`` of ``run_dir`` against the records of ``dataset``; print a verdict table.

    Raises ``PrivacyError`` on a violation.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DataError(f"run folder '{run_dir}' does not exist. Give a folder under {cfg.output_dir}/.")
    contexts, digests = _records(Path(dataset))
    anyid = _any_identifier(contexts)
    # the teacher's and the pair judge's audit.jsonl, the evaluation judge's judge_audit.jsonl
    verdicts = [_check_file(path, run_dir, contexts, digests, anyid) for path in sorted(run_dir.rglob("*audit.jsonl"))]
    leaks = _key_leaks(run_dir, cfg.teacher.gemini.api_key_env)
    report = {
        "run": str(run_dir),
        "requests": sum(v.lines for v in verdicts),
        "sections": sum(v.sections for v in verdicts),
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
    for column in ("audit log", "sections", "requests", "image parts", "violations"):
        table.add_column(column, justify="left" if column == "audit log" else "right")
    for f in report["files"]:
        table.add_row(f["path"], str(f["sections"]), str(f["lines"]), str(f["image_parts"]), str(len(f["violations"])),
                      style="red" if f["violations"] else None)
    table.add_row("API key in run files", "", "", "", str(len(report["key_leaks"])),
                  style="red" if report["key_leaks"] else None)
    console.print(table)
    console.print(json.dumps({k: report[k] for k in ("sections", "requests", "image_parts", "verdict")}))
