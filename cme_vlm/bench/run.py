"""``cme-vlm bench``: time the project's SFT step, DPO step and generation; print a table, write JSON.

The configured model is built with random weights offline (``tiny`` on CPU by default; the
7B architecture with ``model=qwen2_5_vl_7b model.path=""``), once per row so every row starts
from fresh weights, optimizer state and peak-memory counter. ``bench.json`` is rewritten after
every row, so a run stopped by a time limit keeps what it measured; a row that fails is kept
with its error, the rows after it still run, and the command then fails naming it.
"""

from __future__ import annotations

import gc
import platform
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from cme_vlm import atomic
from cme_vlm.bench.generation_rows import generation_row
from cme_vlm.bench.timing import memory_kind, peak_memory_gib
from cme_vlm.config import save_config
from cme_vlm.console import folding_table
from cme_vlm.errors import BenchError, ConfigError
from cme_vlm.models.loading import LoadedModel, load_model
from cme_vlm.schema import ExperimentConfig

ROWS = ("sft", "dpo", "generate")
console = Console()


def bench_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _load(cfg: ExperimentConfig, device: torch.device) -> LoadedModel:
    """Random weights built directly on ``device`` (a 7B model initialises in seconds on a GPU)."""
    with torch.device(device):
        return load_model(cfg)


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _selected(only: str | None) -> list[str]:
    chosen = [s.strip() for s in (only or ",".join(ROWS)).split(",") if s.strip()]
    unknown = [s for s in chosen if s not in ROWS]
    if unknown or not chosen:
        raise ConfigError(f"--only {only!r}: unknown rows {unknown}. Choose a comma-separated subset of {','.join(ROWS)}.")
    return chosen


def _check(cfg: ExperimentConfig, steps: int) -> None:
    b = cfg.bench
    problems = [f"{name}={value} must be at least {low}" for name, value, low in (
        ("--steps", steps, 1), ("bench.batch_size", b.batch_size, 1), ("bench.prompt_tokens", b.prompt_tokens, 1),
        ("bench.answer_tokens", b.answer_tokens, 1), ("bench.image_side", b.image_side, 28),
        ("bench.warmup_steps", b.warmup_steps, 0), ("bench.max_new_tokens", b.max_new_tokens, 1),
        ("bench.generation_steps", b.generation_steps, 1)) if value < low]
    problems += [f"bench.generation_batch_sizes has {n}; each must be at least 1" for n in b.generation_batch_sizes if n < 1]
    if problems:
        raise ConfigError("invalid bench settings:\n  - " + "\n  - ".join(problems))


Job = Callable[[LoadedModel], Iterator[dict[str, Any]]]


def _jobs(cfg: ExperimentConfig, rows: list[str], steps: int, device: torch.device) -> list[tuple[str, Job]]:
    """What to measure, one job (named as its rows) per freshly built model."""
    jobs: list[tuple[str, Job]] = []
    training = [r for r in rows if r in ("sft", "dpo")]
    if training:
        # imported only here, so generation rows run where the training stack's trackers are not installed
        from cme_vlm.bench.rows import training_row

        jobs += [(stage, lambda loaded, stage=stage: iter([training_row(stage, cfg, loaded, steps, device)]))
                 for stage in training]
    if "generate" in rows:
        sampling = cfg.preference.sampling[0]  # the candidates' first setting, as in preference sampling

        def generation(loaded: LoadedModel) -> Iterator[dict[str, Any]]:
            yield generation_row(cfg, loaded, 1, None, device)  # explain first: its peak is the model's and its own
            for n in cfg.bench.generation_batch_sizes:
                yield generation_row(cfg, loaded, n, sampling, device)

        jobs.append(("generate", generation))
    return jobs


def _rows(cfg: ExperimentConfig, rows: list[str], steps: int, device: torch.device) -> Iterator[dict[str, Any]]:
    """Each row as soon as it is measured; a job that raises gives one failed row and the next job runs."""
    for name, job in _jobs(cfg, rows, steps, device):
        try:
            yield from job(_load(cfg, device))
        except Exception as e:  # noqa: BLE001 - kept in bench.json with its reason, then reported
            yield {"row": name, "status": "failed", "error": f"{type(e).__name__}: {e}"[:2000], "shape": {},
                   "peak_memory_gib": peak_memory_gib(device)}
        finally:
            _free()


def _shape_text(r: dict[str, Any]) -> str:
    s = r["shape"]
    if "sequences" in s:
        return f"{s['sequences']}x{s['sequence_length']} (img {s['image_tokens']}, ans {s['answer_tokens']})"
    return f"{r['batch_size']}x(prompt {s['prompt_tokens']}, {s['new_tokens_per_sequence']} new)"


def _table(report: dict[str, Any]) -> Table:
    numbers = ("step s", "tokens/s", "decode ms", "TFLOP/s", "MFU", "peak GiB")
    table = folding_table(f"cme-vlm bench: {report['model']} on {report['device']} (medians of {report['steps']}; "
                          f"MFU against {report['peak_tflops']:g} TFLOP/s)", "row", *numbers, "shape", right=numbers)
    for r in report["rows"]:
        if r["status"] != "ok":
            table.add_row(r["row"], r["status"], "-", "-", "-", "-", f"{r['peak_memory_gib']:.2f}",
                          _shape_text(r) if r["shape"] else r.get("error", ""))
            continue
        flops, decode = r.get("flops_per_s"), r.get("decode_step_s")
        table.add_row(
            r["row"], f"{r['step_time_s']:.4f}", f"{r['tokens_per_s']:,.0f}",
            f"{1000 * decode:.3f}" if decode is not None else "-", f"{flops / 1e12:.4f}" if flops else "-",
            f"{100 * r['mfu']:.2g}%" if "mfu" in r else "-", f"{r['peak_memory_gib']:.2f}", _shape_text(r),
        )
    return table


def _record_memory(cfg: ExperimentConfig, out: Path | None) -> dict[str, Any]:
    # imported only here, like the training rows: the fake-tensor machinery loads the training stack
    from cme_vlm.bench.explain_memory import record_explain_memory
    from cme_vlm.bench.memory import GIB_COLUMNS, record_step_memory, user_measurements

    folder = Path(out) if out else user_measurements()
    measured = [*record_step_memory(cfg, folder=folder), record_explain_memory(cfg, folder=folder)]
    table = folding_table(f"peak memory of one training step and of explain in GiB, measured on fake tensors "
                          f"({cfg.model.name})",
                          "stage", *GIB_COLUMNS, "kept in", right=GIB_COLUMNS)
    for m in measured:
        table.add_row(m.stage, *m.gib(), str(folder / f"{m.stage}-{m.key}.json"))
    console.print(table)
    return {"memory": [m.as_dict() for m in measured]}


def run_bench(cfg: ExperimentConfig, out: Path | None = None, steps: int = 10, only: str | None = None,
              memory: bool = False) -> dict[str, Any]:
    """Time the selected rows (``sft``, ``dpo``, ``generate``); write ``out/bench.json`` and the config.

    ``memory``: instead, measure one SFT and one DPO step's and ``explain``'s peak memory on fake tensors and
    keep them for the dry-run (in ``out``, else the user's measurements folder; ``cme_vlm.bench.memory``).
    """
    if memory:
        return _record_memory(cfg, out)
    _check(cfg, steps)
    rows = _selected(only)
    device = bench_device()
    report: dict[str, Any] = {
        "model": cfg.model.name, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "threads": torch.get_num_threads(), "steps": steps,
        "warmup_steps": cfg.bench.warmup_steps, "peak_tflops": cfg.bench.peak_tflops,
        "memory": memory_kind(device), "rows": [],
    }
    if out is not None:
        save_config(cfg, Path(out))
    for row in _rows(cfg, rows, steps, device):
        report["rows"].append(row)
        if out is not None:
            atomic.write_json(Path(out) / "bench.json", report)
    console.print(_table(report))
    if out is not None:
        console.print(f"bench -> {Path(out) / 'bench.json'}")
    failed = [f"{r['row']} ({r['error']})" for r in report["rows"] if r["status"] == "failed"]
    if failed:
        raise BenchError("bench rows failed: " + "; ".join(failed) + ". The other rows are kept"
                         + (f" in {Path(out) / 'bench.json'}." if out is not None else "."))
    return report
