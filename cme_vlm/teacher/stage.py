"""``cme-vlm teacher answer``: fill the instruction dataset with the teacher's answers."""

from __future__ import annotations

import math
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from pathlib import Path

from datasets import Dataset
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from cme_vlm import atomic
from cme_vlm.anatomy import Anatomy
from cme_vlm.config import save_config
from cme_vlm.data.records import DATASET_DIRNAME, load_dataset, save_dataset
from cme_vlm.errors import TeacherError
from cme_vlm.schema import ExperimentConfig, TeacherConfig
from cme_vlm.schema import TeacherBackend as BackendName
from cme_vlm.teacher.backend import GeminiTeacher, TeacherBackend, TeacherResult
from cme_vlm.teacher.cache import Journal
from cme_vlm.teacher.gemini import GeminiClient
from cme_vlm.teacher.offline import OfflineTeacher
from cme_vlm.teacher.outcome import Failure
from cme_vlm.teacher.privacy import AuditLog
from cme_vlm.teacher.request import build_teacher_request

console = Console(stderr=True)


ANSWER_COLUMNS = ("answer", "provenance", "teacher_model", "answered_at")


def make_backend(cfg: TeacherConfig, anatomy: Anatomy, out: Path) -> TeacherBackend:
    """The configured backend, journalling to ``out/journal.jsonl`` and auditing to ``out/audit.jsonl``."""
    journal = Journal(out / "journal.jsonl")
    if cfg.backend == BackendName.gemini:
        client = GeminiClient(cfg.gemini, journal, AuditLog(out / "audit.jsonl"), seed=cfg.seed)
        return GeminiTeacher(cfg, client)
    return OfflineTeacher(cfg, anatomy, journal)


def _reviewed(ds: Dataset, out: Path) -> dict[str, dict]:
    """Expert-reviewed answers, from the input or from this stage's earlier output: a re-run keeps them."""
    kept = {}
    previous = out / DATASET_DIRNAME
    sources = [ds] + ([load_dataset(previous, "earlier teacher output")] if previous.is_dir() else [])
    for source in sources:
        for row in source.select_columns(["id", *ANSWER_COLUMNS]):
            if row["provenance"].startswith("expert_"):
                kept.setdefault(row["id"], {c: row[c] for c in ANSWER_COLUMNS})
    return kept


def _run(backend: TeacherBackend, ds: Dataset, rows: list[int], anatomy: Anatomy, workers: int) -> dict[int, TeacherResult]:
    """Answer ``rows`` with up to ``workers`` requests in flight, showing progress."""
    results: dict[int, TeacherResult] = {}
    columns = (TextColumn("teacher {task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as progress, ThreadPoolExecutor(workers) as pool:
        task = progress.add_task(backend.model, total=len(rows))
        futures: dict[Future[TeacherResult], int] = {}
        try:
            for i in rows:
                request = build_teacher_request(ds[i], anatomy)
                futures[pool.submit(backend.answer, request)] = i
            for future in as_completed(futures):
                results[futures[future]] = future.result()
                progress.advance(task)
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return results


def _fill(result: TeacherResult) -> dict:
    ok = not result.failure
    return {"answer": result.answer if ok else "", "provenance": "teacher" if ok else "",
            "teacher_model": result.model, "answered_at": result.time if ok else ""}


def _apply(ds: Dataset, results: dict[int, TeacherResult], reviewed: dict[str, dict]) -> Dataset:
    def fill(row: dict, i: int) -> dict:
        if row["id"] in reviewed:
            return {**row, **reviewed[row["id"]]}
        return {**row, **_fill(results[i])} if i in results else row

    return ds.map(fill, with_indices=True, features=ds.features, keep_in_memory=True, desc="filling answers")


def summarise(results: dict[int, TeacherResult], skipped: int, model: str) -> dict:
    """Counts for ``summary.json``: answered (fresh and cached), failed by reason, kept expert rows."""
    failures = Counter(r.failure for r in results.values() if r.failure)
    answered = [r for r in results.values() if not r.failure]
    return {
        "model": model,
        "records": len(results) + skipped,
        "answered": len(answered),
        "cached": sum(r.cached for r in answered),
        "failed": sum(failures.values()),
        "failed_by_reason": dict(sorted(failures.items())),
        "kept_expert_reviewed": skipped,
        "failure_fraction": sum(failures.values()) / max(1, len(results)),
    }


def _print(summary: dict) -> None:
    table = Table(title=f"teacher answers ({summary['model']})")
    table.add_column("outcome")
    table.add_column("records", justify="right")
    table.add_row("answered", str(summary["answered"]))
    table.add_row("  of which cached", str(summary["cached"]))
    for reason, n in summary["failed_by_reason"].items():
        table.add_row(f"failed: {reason}", str(n), style="red")
    table.add_row("kept (expert reviewed)", str(summary["kept_expert_reviewed"]))
    console.print(table)


def answer(cfg: ExperimentConfig, dataset: Path, out: Path) -> Path:
    """Answer every record of ``dataset``; write ``out/dataset``, summary, journal, audit and config."""
    out = Path(out)
    ds = load_dataset(dataset, "instruction dataset")
    anatomy = Anatomy(cfg.anatomy)
    backend = make_backend(cfg.teacher, anatomy, out)
    out.mkdir(parents=True, exist_ok=True)  # only once the inputs are known good: a bad one leaves nothing
    (out / "audit.jsonl").touch()  # present even when nothing was sent, so the audit can say so
    reviewed = _reviewed(ds, out)
    rows = [i for i, rid in enumerate(ds["id"]) if rid not in reviewed]
    workers = cfg.teacher.gemini.concurrency if cfg.teacher.backend == BackendName.gemini else 1
    results = _run(backend, ds, rows, anatomy, max(1, workers))
    summary = summarise(results, len(ds) - len(rows), backend.model)
    target = save_dataset(_apply(ds, results, reviewed), out)
    atomic.write_json(out / "summary.json", summary)
    save_config(cfg, out)
    _print(summary)
    _close(summary, cfg.teacher, out / "journal.jsonl")
    return target


def _close(summary: dict, cfg: TeacherConfig, journal: Path) -> None:
    """Say what a re-run will do; raise while transient faults left requests unanswered or final failures pass the limit."""
    reasons = summary["failed_by_reason"]
    final = {r: n for r, n in reasons.items() if Failure.from_reason(r).final}
    transient = {r: n for r, n in reasons.items() if r not in final}
    final_note = (
        f"{sum(final.values())} record(s) have no answer for a final reason ({final}); a re-run will not ask for them "
        f"again (their outcomes are kept in {journal}), and they stay out of training and evaluation"
    )
    if transient:
        raise TeacherError(
            f"{sum(transient.values())} teacher request(s) got no answer because transient faults outlasted "
            f"teacher.gemini.max_retries={cfg.gemini.max_retries} ({transient}). Answers so far are kept in {journal}; "
            "re-run the stage to ask only these again." + (f" Besides, {final_note}." if final else "")
        )
    if summary["failure_fraction"] > cfg.max_failure_fraction:
        needed = math.ceil(summary["failure_fraction"] * 100) / 100
        raise TeacherError(
            f"{final_note}. That is {summary['failure_fraction']:.1%} of the requests, more than "
            f"teacher.max_failure_fraction={cfg.max_failure_fraction}; to go on without them, set "
            f"teacher.max_failure_fraction={needed} and re-run (nothing is asked again)."
        )
    if final:
        console.print(f"[yellow]{final_note}.[/]")
