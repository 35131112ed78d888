"""Frames and masks from disk: samples, loaders for a manifest or the DSAD layout, validation, splits.

A manifest (CSV or JSONL) has one row per frame with the columns ``frame, masks, procedure,
side, phase``; ``masks`` is a JSON object ``{"structure": "mask path"}``. A CSV may instead
give one ``mask_<structure>`` column per structure (an empty cell: no mask). Paths are relative
to the data root, or absolute. Several rows for the same frame are merged; the same
(frame, structure) twice is a duplicate. Masks are 8-bit PNGs ("L" or "1") with values 0/255.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cme_vlm.anatomy import Anatomy
from cme_vlm.errors import DataError
from cme_vlm.schema import Side

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = ("frame", "masks", "procedure", "side", "phase")
SPLITS = ("train", "val", "test")
_FRAME_MODES = {"RGB", "RGBA", "L", "P"}


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

    def __post_init__(self) -> None:
        self.name = self.name or self.frame.as_posix()


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
    """A binary mask ([H, W] bool) from an 8-bit PNG with values 0/255; checked against the frame's size."""
    path = Path(path)
    image = _open(path, "mask")
    fix = "Save it as a single-channel 8-bit PNG with 0 for background and 255 for the structure."
    if image.mode in {"I;16", "I;16B", "I;16L", "I"}:
        raise DataError(f"mask '{path}' is {image.mode} (16/32-bit), not 8-bit. {fix}")
    if image.mode not in {"L", "1"}:
        raise DataError(f"mask '{path}' has image mode {image.mode} (colour or alpha channels). {fix}")
    values = np.asarray(image.convert("L"))
    extra = np.setdiff1d(np.unique(values), [0, 255])
    if extra.size:
        raise DataError(f"mask '{path}' is not binary: it holds values {extra[:5].tolist()} besides 0 and 255. {fix}")
    if frame_shape is not None and values.shape != tuple(frame_shape[:2]):
        raise DataError(
            f"mask '{path}' is {values.shape[1]}x{values.shape[0]} but its frame is {frame_shape[1]}x{frame_shape[0]} "
            "(width x height). Resize the mask with nearest-neighbour to the frame's size."
        )
    mask = values == 255
    if not mask.any():
        raise DataError(f"mask '{path}' is empty (all 0). Remove it from the manifest or redraw the annotation.")
    return mask


def _side(value: Any, where: str) -> str:
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
    """Required columns absent from ``columns``; ``mask_<structure>`` columns stand in for ``masks``."""
    columns = set(columns)
    has_mask_columns = any(c.startswith("mask_") for c in columns)
    return [c for c in MANIFEST_COLUMNS if c not in columns and not (c == "masks" and has_mask_columns)]


def _read_rows(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """(where, row) for each row of a CSV or JSONL manifest."""
    if not path.is_file():
        raise DataError(f"manifest '{path}' does not exist. Set data.manifest to your CSV or JSONL file.")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        rows = []
        for i, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append((f"manifest '{path}' line {i}", json.loads(line)))
                except json.JSONDecodeError as e:
                    raise DataError(f"manifest '{path}' line {i} is not valid JSON ({e}). Fix that line.") from e
        return rows
    if path.suffix == ".csv":
        reader = csv.DictReader(text.splitlines())
        if missing := _missing_columns(reader.fieldnames or []):
            raise DataError(f"manifest '{path}' lacks column(s) {', '.join(missing)}. Required: {', '.join(MANIFEST_COLUMNS)}.")
        return [(f"manifest '{path}' line {i}", row) for i, row in enumerate(reader, 2)]
    raise DataError(f"manifest '{path}' must end in .csv or .jsonl.")


def load_manifest(path: str | Path, root: str | Path, anatomy: Anatomy) -> list[FrameSample]:
    """Frame samples listed in a CSV or JSONL manifest; paths are resolved against ``root``."""
    path, root = Path(path), Path(root)
    samples: dict[str, FrameSample] = {}
    for where, row in _read_rows(path):
        if missing := _missing_columns(row):
            raise DataError(f"{where} lacks column(s) {', '.join(missing)}. Required: {', '.join(MANIFEST_COLUMNS)}.")
        name = str(row["frame"])
        masks = {anatomy.resolve(s, source=where): root / p for s, p in _masks_of(row, where).items()}
        listed = FrameSample(str(row["procedure"]), root / name, {}, _side(row["side"], where), str(row["phase"]), name, where)
        sample = samples.setdefault(name, listed)
        if (sample.procedure, sample.side, sample.phase) != (listed.procedure, listed.side, listed.phase):
            raise DataError(
                f"{where}: frame '{name}' is listed before ({sample.where}) with another procedure, side or phase. Keep one."
            )
        for key, mask in masks.items():
            if key in sample.masks:
                raise DataError(f"{where}: duplicate record, frame '{name}' already has a '{key}' mask ({sample.where}). Remove one.")
            sample.masks[key] = mask
    if not samples:
        raise DataError(f"manifest '{path}' lists no frames. Add one row per frame.")
    return list(samples.values())


def _dsad_pairs(folder: Path) -> list[tuple[Path, Path]]:
    """(imageNN.png, maskNN.png) pairs of one DSAD patient folder."""
    pairs = []
    for mask in sorted(folder.glob("mask*.png")):
        image = folder / mask.name.replace("mask", "image", 1)
        if not image.is_file():
            raise DataError(f"DSAD mask '{mask}' has no frame '{image.name}' beside it. Restore the frame or remove the mask.")
        pairs.append((image, mask))
    for image in sorted(folder.glob("image*.png")):
        if not (folder / image.name.replace("image", "mask", 1)).is_file():
            raise DataError(f"DSAD frame '{image}' has no mask beside it. Restore the mask or remove the frame.")
    return pairs


def load_dsad(root: str | Path, anatomy: Anatomy, side: Side | str, phase: str) -> list[FrameSample]:
    """Frame samples from the Dresden Surgical Anatomy Dataset layout ``<structure>/<patient>/imageNN.png + maskNN.png``.

    Structure folders map to registry keys through the registry's synonyms; folders that map
    to nothing are skipped and listed in one notice. ``anno_*``, ``multilabel`` and files at the
    top level (``weak_labels.csv``) are ignored. A frame found in several structure folders
    (identical bytes in one patient's folders) becomes one sample with several masks.
    """
    root, side = Path(root), _side(side.value if isinstance(side, Side) else side, "data.dsad_side")
    if not root.is_dir():
        raise DataError(f"DSAD root '{root}' is not a folder. Set data.root to the dataset's top folder.")
    samples: dict[tuple[str, str], FrameSample] = {}
    skipped = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        if folder.name.startswith("anno_") or folder.name == "multilabel":
            continue
        key = anatomy.lookup(folder.name)
        if key is None:
            skipped.append(folder.name)
            continue
        for patient in sorted(p for p in folder.iterdir() if p.is_dir() and p.name.isdigit()):
            procedure = f"dsad_{int(patient.name):02d}"
            for image, mask in _dsad_pairs(patient):
                digest = hashlib.sha256(image.read_bytes()).hexdigest()[:16]
                name = image.relative_to(root).as_posix()
                sample = samples.setdefault((procedure, digest), FrameSample(procedure, image, {}, side, phase, name, str(image)))
                if key in sample.masks:
                    raise DataError(f"DSAD frame '{image}' duplicates '{sample.frame}' for '{key}' (same pixels). Remove one.")
                sample.masks[key] = mask
    if skipped:
        log.warning("DSAD folders with no structure in the registry, skipped: %s. Add synonyms to the registry to use them.", ", ".join(skipped))
    if not samples:
        raise DataError(f"DSAD root '{root}' holds no frames of registry structures. Check the path and the registry's synonyms.")
    return list(samples.values())


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
