"""Frames and masks from disk: samples, the manifest loader, frame and mask readers, splits.

A manifest (CSV or JSONL, UTF-8 with or without a byte-order mark) has one row per frame with
the columns ``frame, masks, procedure, side, phase``; ``masks`` is a JSON object
``{"structure": "mask path"}``. A CSV may instead give one ``mask_<structure>`` column per
structure (an empty cell: no mask). Paths are relative to the data root, or absolute. Several
rows for the same frame are merged; the same (frame, structure) twice is a duplicate. A mask is a
single-channel image with two values, 0 the background: 0/255, 0/1, mode "1", 16-bit 0/65535.

The loaders record a wrong row or file in ``Problems`` and go on, so one run finds every problem;
only a manifest or folder that cannot be read at all raises at once.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cme_vlm.anatomy import Anatomy
from cme_vlm.data.validation import Problems
from cme_vlm.errors import DataError
from cme_vlm.schema import Side

MANIFEST_COLUMNS = ("frame", "masks", "procedure", "side", "phase")
SPLITS = ("train", "val", "test")
_FRAME_MODES = {"RGB", "RGBA", "L", "P"}
_MASK_MODES = {"1", "L", "I", "I;16", "I;16B", "I;16L", "I;16N"}  # one channel: 1-, 8-, 16- or 32-bit
_MASK_FIX = "Save it as a single-channel 8-bit PNG with 0 for background and 255 for the structure."


class EmptyMaskError(DataError):
    """A mask that marks no pixel: a fault in a manifest, a structure out of view in a multi-organ set."""


@dataclass
class FrameSample:
    """One frame, the masks drawn on it, and where it comes from."""

    procedure: str
    frame: Path
    masks: dict[str, Path]
    side: str
    phase: str
    name: str = ""  # the frame's identifier in its dataset (its path under the root)
    where: str = field(default="", compare=False)  # where it was listed, for error messages
    optional: set[str] = field(default_factory=set)  # masks that may be empty: a multi-organ set's structure out of view

    def __post_init__(self) -> None:
        self.name = self.name or self.frame.as_posix()

    def add_mask(self, key: str, mask: Path, where: str) -> None:
        """Add the mask of structure ``key``; the structure twice on one frame is a duplicate."""
        if key in self.masks:
            raise DataError(
                f"{where}: duplicate record, frame '{self.name}' already has a '{key}' mask ({self.where}). Remove one."
            )
        self.masks[key] = mask


def _open(path: Path, what: str) -> Image.Image:
    if not path.is_file():
        raise DataError(f"{what} '{path}' does not exist. Fix the path in the manifest or restore the file.")
    try:
        image = Image.open(path)
        image.load()
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{what} '{path}' cannot be read ({e}); it is truncated or not an image. Re-export it as PNG.") from e
    return image


def read_frame(path: str | Path) -> np.ndarray:
    """A frame as [H, W, 3] uint8 RGB."""
    path = Path(path)
    image = _open(path, "frame")
    if image.mode not in _FRAME_MODES:
        raise DataError(f"frame '{path}' has image mode {image.mode}; save it as 8-bit RGB (PNG or JPEG).")
    return np.asarray(image.convert("RGB"))


def read_mask(path: str | Path, frame_shape: tuple[int, ...] | None = None) -> np.ndarray:
    """A binary mask ([H, W] bool) from a single-channel image with two values, 0 the background.

    0/255, 0/1, mode "1" and 16-bit 0/65535 all qualify; the size is checked against ``frame_shape``.
    """
    path = Path(path)
    image = _open(path, "mask")
    if image.mode not in _MASK_MODES:
        raise DataError(f"mask '{path}' has image mode {image.mode} (colour, palette or alpha channels). {_MASK_FIX}")
    values = np.asarray(image)
    if frame_shape is not None and values.shape != tuple(frame_shape[:2]):
        raise DataError(
            f"mask '{path}' is {values.shape[1]}x{values.shape[0]} but its frame is {frame_shape[1]}x{frame_shape[0]} "
            "(width x height). Resize the mask with nearest-neighbour to the frame's size."
        )
    levels = np.unique(values).astype(np.int64)
    if levels.tolist() == [0]:
        raise EmptyMaskError(f"mask '{path}' is empty (all 0). Remove it from the manifest or redraw the annotation.")
    if levels.size != 2 or levels[0] != 0:
        shown = ", ".join(map(str, levels[:5].tolist())) + (", ..." if levels.size > 5 else "")
        raise DataError(
            f"mask '{path}' is not binary: it holds {levels.size} value(s) ({shown}), "
            f"not two with 0 for background. {_MASK_FIX}"
        )
    return values != 0


def side_value(value: Any, where: str) -> str:
    """``value`` as a record's side, "left" or "right"; anything else is a ``DataError`` naming ``where``."""
    if value not in (Side.left.value, Side.right.value):
        raise DataError(f"{where}: side '{value}' must be 'left' or 'right' (the CME side of the procedure).")
    return str(value)


def _masks_of(row: dict[str, Any], where: str) -> dict[str, str]:
    """The structure -> mask path mapping of a manifest row (``masks`` JSON or ``mask_<s>`` columns)."""
    masks = row.get("masks")
    if isinstance(masks, str) and masks.strip():
        try:
            masks = json.loads(masks)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: column 'masks' is not a JSON object ({e}). Write it as {{\"pancreas\": \"path.png\"}}.") from e
    if masks is None or masks == "":
        masks = {k[len("mask_"):]: v for k, v in row.items() if k.startswith("mask_") and v}
    if not isinstance(masks, dict) or not masks:
        raise DataError(f"{where}: no masks. Give 'masks' as a JSON object structure -> path, or mask_<structure> columns.")
    return {str(k): str(v) for k, v in masks.items()}


def _missing_columns(columns: Iterable[str]) -> list[str]:
    """Required columns absent from a CSV header; ``mask_<structure>`` columns stand in for ``masks``."""
    columns = set(columns)
    has_mask_columns = any(c.startswith("mask_") for c in columns)
    return [c for c in MANIFEST_COLUMNS if c not in columns and not (c == "masks" and has_mask_columns)]


def _json_row(line: str, where: str) -> dict[str, Any]:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{where} is not valid JSON ({e}). Fix that line.") from e
    if not isinstance(row, dict):
        raise DataError(f"{where} is not a JSON object. Write one object a line with {', '.join(MANIFEST_COLUMNS)}.")
    return row


def _read_rows(path: Path, problems: Problems) -> list[tuple[str, dict[str, Any]]]:
    """(where, row) for each row of a CSV or JSONL manifest; a JSONL line that is not an object is a problem."""
    if not path.is_file():
        raise DataError(f"manifest '{path}' does not exist. Set data.manifest to your CSV or JSONL file.")
    try:
        text = path.read_text(encoding="utf-8-sig")  # a spreadsheet's "CSV UTF-8" starts with a byte-order mark
    except UnicodeDecodeError as e:
        raise DataError(f"manifest '{path}' is not UTF-8 text ({e}). Save it as UTF-8 (\"CSV UTF-8\" in a spreadsheet).") from e
    if path.suffix == ".jsonl":
        lines = [(f"manifest '{path}' line {i}", line) for i, line in enumerate(text.splitlines(), 1) if line.strip()]
        rows = [(where, problems.attempt("manifest row", where, _json_row, line, where)) for where, line in lines]
        return [(where, row) for where, row in rows if row is not None]
    if path.suffix == ".csv":
        reader = csv.DictReader(text.splitlines())
        if missing := _missing_columns(reader.fieldnames or []):
            raise DataError(f"manifest '{path}' lacks column(s) {', '.join(missing)}. Required: {', '.join(MANIFEST_COLUMNS)}.")
        return [(f"manifest '{path}' line {i}", row) for i, row in enumerate(reader, 2)]
    raise DataError(f"manifest '{path}' must end in .csv or .jsonl.")


def _add_row(samples: dict[str, FrameSample], where: str, row: dict[str, Any], root: Path, anatomy: Anatomy,
             problems: Problems) -> None:
    """Merge one manifest row into ``samples``; each of its masks is checked on its own."""
    if None in row:  # csv.DictReader's key for cells beyond the header
        raise DataError(f"{where} has more cells than the header. Quote cells that hold commas.")
    if missing := [c for c in MANIFEST_COLUMNS if c != "masks" and row.get(c) in (None, "")]:
        raise DataError(f"{where} lacks column(s) {', '.join(missing)}. Required: {', '.join(MANIFEST_COLUMNS)}.")
    name, masks = str(row["frame"]), _masks_of(row, where)
    listed = FrameSample(str(row["procedure"]), root / name, {}, side_value(row["side"], where), str(row["phase"]), name, where)
    sample = samples.setdefault(name, listed)
    if (sample.procedure, sample.side, sample.phase) != (listed.procedure, listed.side, listed.phase):
        raise DataError(
            f"{where}: frame '{name}' is listed before ({sample.where}) with another procedure, side or phase. Keep one."
        )
    for structure, mask in masks.items():
        key = problems.attempt("manifest row", where, anatomy.resolve, structure, where)
        if key is not None:
            problems.attempt("manifest row", where, sample.add_mask, key, root / mask, where)


def load_manifest(path: str | Path, root: str | Path, anatomy: Anatomy, problems: Problems) -> list[FrameSample]:
    """Frame samples listed in a CSV or JSONL manifest; paths are resolved against ``root``.

    A wrong row or mask entry goes to ``problems`` and is left out; an unreadable manifest raises.
    """
    path, root = Path(path), Path(root)
    samples: dict[str, FrameSample] = {}
    for where, row in _read_rows(path, problems):
        problems.attempt("manifest row", where, _add_row, samples, where, row, root, anatomy, problems)
    if not samples and not problems:
        raise DataError(f"manifest '{path}' lists no frames. Add one row per frame.")
    return [s for s in samples.values() if s.masks]


def split_by_procedure(procedures: Iterable[str], val_fraction: float, test_fraction: float, seed: int) -> dict[str, str]:
    """Assign each procedure to train, val or test; no procedure is in two splits.

    With three or more procedures, every split with a positive fraction gets at least one.
    """
    unique = sorted(set(procedures))
    order = [unique[i] for i in np.random.default_rng(seed).permutation(len(unique))]
    n = len(order)
    n_test, n_val = round(n * test_fraction), round(n * val_fraction)
    if n >= 3:
        n_test = max(n_test, 1) if test_fraction > 0 else 0
        n_val = max(n_val, 1) if val_fraction > 0 else 0
    while n_test + n_val >= n and (n_test or n_val):  # keep at least one procedure to train on
        if n_test >= n_val:
            n_test -= 1
        else:
            n_val -= 1
    names = ["test"] * n_test + ["val"] * n_val + ["train"] * (n - n_test - n_val)
    return dict(zip(order, names, strict=True))
