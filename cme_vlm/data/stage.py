"""The data stage: write synthetic frames and masks; turn frames and masks into instruction records.

``build`` reads a frames-and-masks source (``data.source``: the synthetic tree's manifest, your
own manifest, or the DSAD layout), checks every row, frame and mask before writing anything, and
saves one record per (frame, structure) with ``cme_vlm.data.records.RECORD_FEATURES``. Every
problem found is listed in ``out/invalid.csv``; then the build stops (``data.on_invalid: stop``,
the file is all it writes) or goes on without the inputs at fault (``skip``).
"""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from datasets import Dataset
from datasets.arrow_writer import ArrowWriter
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from cme_vlm.anatomy import Anatomy
from cme_vlm.config import save_config
from cme_vlm.data.dsad import load_dsad
from cme_vlm.data.frames import EmptyMaskError, FrameSample, load_manifest, read_frame, read_mask, split_by_procedure
from cme_vlm.data.overlay import visual_prompt
from cme_vlm.data.prompts import student_prompt
from cme_vlm.data.records import RECORD_FEATURES, record_id, save_dataset
from cme_vlm.data.synthetic import MANIFEST_NAME, write_synthetic_tree
from cme_vlm.data.validation import Problems, problem_summary, write_problems
from cme_vlm.errors import DataError
from cme_vlm.schema import DataSource, ExperimentConfig, OnInvalid

INVALID_FILE = "invalid.csv"

console = Console(stderr=True)


def synthesize(cfg: ExperimentConfig, out: str | Path) -> Path:
    """Write ``cfg.data.synthetic.n_frames`` synthetic frames with masks and a manifest to ``out``."""
    n = cfg.data.synthetic.n_frames
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("synthetic frames", total=n)
        manifest = write_synthetic_tree(cfg, out, on_frame=lambda: progress.advance(task))
    console.print(f"wrote {n} synthetic frames to {out} (a stand-in for clinical data)")
    return manifest


def _find_manifest(cfg: ExperimentConfig, frames: Path) -> Path:
    if cfg.data.manifest:
        return Path(cfg.data.manifest)
    for name in (MANIFEST_NAME, "manifest.csv"):
        if (frames / name).is_file():
            return frames / name
    hint = "run `cme-vlm data synth` first" if cfg.data.source == DataSource.synthetic else "set data.manifest"
    raise DataError(f"no manifest.jsonl or manifest.csv in '{frames}'; {hint}.")


def load_samples(cfg: ExperimentConfig, frames: str | Path, anatomy: Anatomy, problems: Problems) -> list[FrameSample]:
    """The frame samples of ``cfg.data.source``; ``data.root`` (if set) wins over ``frames``; wrong rows go to ``problems``."""
    frames = Path(frames)
    if cfg.data.source == DataSource.dsad:
        return load_dsad(cfg.data.root or frames, anatomy, cfg.data.dsad_side, cfg.data.dsad_phase, problems)
    manifest = _find_manifest(cfg, frames)
    return load_manifest(manifest, cfg.data.root or manifest.parent, anatomy, problems)


def _png(array: np.ndarray) -> dict[str, Any]:
    ok, data = cv2.imencode(".png", cv2.cvtColor(array, cv2.COLOR_RGB2BGR) if array.ndim == 3 else array)
    if not ok:
        raise DataError("could not encode an image as PNG.")
    return {"bytes": data.tobytes(), "path": None}


def _records(cfg: ExperimentConfig, samples: list[FrameSample], splits: dict[str, str], progress: Progress) -> Iterator[dict]:
    anatomy = Anatomy(cfg.anatomy)
    task = progress.add_task("instruction records", total=len(samples))
    for sample in samples:
        frame = read_frame(sample.frame)
        for key in sorted(sample.masks):
            overlay, mask = visual_prompt(
                frame, read_mask(sample.masks[key], frame.shape), cfg.data.overlay, cfg.data.image_size,
                anatomy[key].overlay_colour,
            )
            rid = record_id(sample.procedure, sample.name, key)
            yield {
                "id": rid, "procedure": sample.procedure, "frame": sample.name, "structure": key,
                "side": sample.side, "phase": sample.phase, "split": splits[sample.procedure],
                "prompt": student_prompt(cfg.data.prompts, rid, anatomy.scene(sample.side), sample.phase),
                "overlay": _png(overlay), "mask": _png(mask.astype(np.uint8) * 255),
                "answer": "", "provenance": "", "teacher_model": "", "answered_at": "",
            }
        progress.advance(task)


def _shows_structure(mask: Path, shape: tuple[int, ...] | None, optional: bool) -> bool:
    """Whether a mask marks its structure; an empty optional mask (a multi-organ set's structure out of view) does not."""
    try:
        read_mask(mask, shape)
    except EmptyMaskError:
        if not optional:
            raise
        return False
    return True


def _readable(samples: list[FrameSample], problems: Problems) -> list[FrameSample]:
    """The samples whose frame reads, each with the masks that read and mark something; every other file goes to ``problems``.

    A mask is checked even when its frame is not (without the size check), so one run finds both.
    """
    kept, out_of_view = [], 0
    with Progress(console=console, transient=True) as progress:
        for sample in progress.track(samples, description="checking frames and masks"):
            frame = problems.attempt("frame", sample.frame, read_frame, sample.frame)
            shape = None if frame is None else frame.shape
            shown = {k: problems.attempt("mask", m, _shows_structure, m, shape, k in sample.optional)
                     for k, m in sample.masks.items()}
            out_of_view += sum(v is False for v in shown.values())
            masks = {k: m for k, m in sample.masks.items() if shown[k]}
            if frame is not None and masks:
                kept.append(replace(sample, masks=masks))
    if out_of_view:
        console.print(f"{out_of_view} multi-organ mask(s) mark nothing (structure not in view): no record for those")
    return kept


def _report(problems: Problems, out: Path, on_invalid: OnInvalid, kept: int) -> None:
    """List every problem in ``out/invalid.csv`` and on screen; stop unless ``skip`` leaves frames to build from."""
    path = out / INVALID_FILE
    if not problems:
        path.unlink(missing_ok=True)  # a list from an earlier run would describe inputs since fixed
        return
    write_problems(problems, path)
    console.print(problem_summary(problems, path))
    if on_invalid is OnInvalid.skip and kept:
        console.print(f"[yellow]left out the {len(problems)} input(s) listed in {path}; building from the {kept} valid frames[/]")
        return
    fix = "Fix them and re-run" + (", or set data.on_invalid=skip to build from the valid rows only" if kept else "")
    raise DataError(
        f"{len(problems)} problem(s) in the frames and masks, all listed in '{path}'; the first: "
        f"{problems.found[0].message} {fix}." + ("" if kept else " No valid frame is left to build from.")
    )


def _summary(ds: Dataset) -> Table:
    table = Table(title="instruction records")
    splits = sorted(set(ds["split"]), key=["train", "val", "test"].index)
    counts = Counter(zip(ds["structure"], ds["split"], strict=True))
    table.add_column("structure")
    for split in splits:
        table.add_column(split, justify="right")
    for structure in sorted(set(ds["structure"])):
        table.add_row(structure, *(str(counts[structure, s]) for s in splits))
    return table


def build(cfg: ExperimentConfig, frames: str | Path, out: str | Path) -> Path:
    """Frames and masks -> instruction dataset without answers, saved in ``out/dataset`` with ``out/config.yaml``."""
    anatomy, problems = Anatomy(cfg.anatomy), Problems()
    samples = _readable(sorted(load_samples(cfg, frames, anatomy, problems), key=lambda s: (s.procedure, s.name)), problems)
    _report(problems, Path(out), cfg.data.on_invalid, len(samples))
    splits = split_by_procedure((s.procedure for s in samples), cfg.data.val_fraction, cfg.data.test_fraction, cfg.data.split_seed)
    with Progress(console=console, transient=True) as progress, tempfile.TemporaryDirectory(prefix="cme-vlm-build-") as tmp:
        arrow = str(Path(tmp) / "records.arrow")
        # stream records to an Arrow file, so memory stays flat however many frames there are
        with ArrowWriter(features=RECORD_FEATURES, path=arrow) as writer:
            for record in _records(cfg, samples, splits, progress):
                writer.write(RECORD_FEATURES.encode_example(record))
            writer.finalize()
        ds = Dataset.from_file(arrow)
        path = save_dataset(ds, out)
    save_config(cfg, out)
    console.print(_summary(ds))
    console.print(f"saved {len(ds)} records from {len(samples)} frames to {path}")
    return path
