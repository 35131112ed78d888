"""The instruction dataset: one record per (frame, structure), stored with ``datasets``.

Columns (``RECORD_FEATURES``):

- ``id``: stable record id (a hash; carries no patient or procedure identifier)
- ``procedure``, ``frame``: local identifiers; they never leave the machine
- ``structure``: registry key; ``side``: left | right; ``phase``: free text from the manifest
- ``split``: train | val | test (by procedure)
- ``prompt``: the question the student sees with the overlay
- ``overlay``: the frame with the semi-transparent mask, at the model's resolution (PNG)
- ``mask``: the binary mask at the same resolution, mode "L", values 0/255 (PNG)
- ``answer``, ``provenance``, ``teacher_model``, ``answered_at``: filled by the teacher stage;
  provenance is "" (no answer yet), teacher, expert_approved, expert_edited or expert_rejected

Export with ``export_dataset`` to Parquet or JSONL (images as base64 PNG strings).
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import datasets
from datasets import Dataset, Features, Value
from datasets import Image as ImageFeature

from cme_vlm import atomic
from cme_vlm.errors import DataError

DATASET_DIRNAME = "dataset"

# A stage reads earlier stages' datasets and must not write into them: transforms (filter, sort)
# keep their cache files in a temporary folder instead of beside the loaded dataset.
datasets.disable_caching()

RECORD_FEATURES = Features(
    {
        "id": Value("string"),
        "procedure": Value("string"),
        "frame": Value("string"),
        "structure": Value("string"),
        "side": Value("string"),
        "phase": Value("string"),
        "split": Value("string"),
        "prompt": Value("string"),
        "overlay": ImageFeature(),
        "mask": ImageFeature(),
        "answer": Value("string"),
        "provenance": Value("string"),
        "teacher_model": Value("string"),
        "answered_at": Value("string"),
    }
)

PROVENANCES = ("teacher", "expert_approved", "expert_edited", "expert_rejected")
TRAINABLE_PROVENANCES = ("teacher", "expert_approved", "expert_edited")


def record_id(procedure: str, frame: str, structure: str) -> str:
    """A stable id that does not reveal the procedure or frame it was made from."""
    return hashlib.sha256(f"{procedure}\x00{frame}\x00{structure}".encode()).hexdigest()[:16]


def save_dataset(ds: Dataset, folder: str | Path) -> Path:
    """Save atomically as ``folder/dataset`` (``save_to_disk``); an interrupted save leaves no trace."""
    target = Path(folder) / DATASET_DIRNAME
    with atomic.atomic_dir(target) as tmp:
        ds.save_to_disk(str(tmp))
    return target


def load_dataset(path: str | Path, what: str = "dataset") -> Dataset:
    """Load a dataset saved by ``save_dataset``; ``path`` is the stage folder or the dataset itself."""
    path = Path(path)
    if (path / DATASET_DIRNAME).is_dir():
        path = path / DATASET_DIRNAME
    if not (path / "dataset_info.json").is_file():
        raise DataError(
            f"{what} '{path}' is not a saved dataset (no dataset_info.json). "
            "Point to the folder written by the previous stage, or run that stage first."
        )
    try:
        return datasets.load_from_disk(str(path))
    except Exception as e:  # datasets raises many kinds for a damaged folder
        raise DataError(f"{what} '{path}' cannot be read ({e}). Re-run the stage that wrote it.") from e


def _image_columns(ds: Dataset) -> list[str]:
    return [name for name, feature in ds.features.items() if isinstance(feature, ImageFeature)]


def raw_images(ds: Dataset) -> Dataset:
    """The same records with image columns left as stored: ``{"bytes": PNG bytes, "path": None}``."""
    for name in _image_columns(ds):
        ds = ds.cast_column(name, ImageFeature(decode=False))
    return ds


def _write_jsonl(ds: Dataset, path: Path) -> None:
    """One JSON object per record; image columns become base64 PNG strings."""
    images = _image_columns(ds)
    with open(path, "w", encoding="utf-8") as f:
        for row in raw_images(ds):
            for name in images:
                row[name] = base64.b64encode(row[name]["bytes"]).decode("ascii") if row[name] else None
            f.write(json.dumps(row, sort_keys=True) + "\n")


def export_dataset(ds: Dataset, path: str | Path) -> Path:
    """Export to Parquet (``.parquet``) or JSONL (``.jsonl``, images as base64 PNG strings)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    if path.suffix == ".parquet":
        ds.to_parquet(str(tmp))
    elif path.suffix == ".jsonl":
        _write_jsonl(ds, tmp)
    else:
        raise DataError(f"export path '{path}' must end in .parquet or .jsonl.")
    tmp.replace(path)
    return path
