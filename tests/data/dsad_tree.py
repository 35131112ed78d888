"""Synthetic trees in the Dresden Surgical Anatomy Dataset's layout (``cme_vlm/data/dsad.py``), any size.

The tests write small ones; the scale benchmark writes a DSAD-sized one (bench/NOTES.md):

    python tests/data/dsad_tree.py /tmp/dsad --frames 13000 --size 1920x1080

Frames are smooth random colour fields (distinct per frame), masks one filled ellipse each. Every
structure folder holds the same share of the frames, spread over the surgeries; the ``multilabel`` set
has one ``maskXX_<structure>.png`` per structure on each frame, an all-zero one for a structure out of
view; an ``anno_1`` folder and ``weak_labels.csv`` stand where DSAD keeps them and are not read.
"""

from __future__ import annotations

import argparse
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

STRUCTURES = ("abdominal_wall", "colon", "inferior_mesenteric_artery", "intestinal_veins", "liver", "pancreas",
              "small_intestine", "spleen", "stomach", "ureter", "vesicular_glands")


@dataclass(frozen=True)
class TreeCounts:
    """What a written tree holds: frames, and the records a build makes of it (one per non-empty mask)."""

    frames: int
    records: int
    surgeries: int
    per_structure: dict[str, int]


def _frame(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    w, h = size
    small = rng.integers(0, 256, (9, 16, 3), dtype=np.uint8)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def _mask(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    w, h = size
    mask = np.zeros((h, w), np.uint8)
    centre = (int(rng.uniform(0.2, 0.8) * w), int(rng.uniform(0.2, 0.8) * h))
    axes = (max(2, int(rng.uniform(0.08, 0.25) * w)), max(2, int(rng.uniform(0.08, 0.25) * h)))
    cv2.ellipse(mask, centre, axes, float(rng.uniform(0, 180)), 0, 360, 255, -1)
    return mask


def write_dsad_layout(root: Path, frames: int = 44, surgeries: int = 4, multilabel_share: float = 0.11,
                      size: tuple[int, int] = (64, 36), structures: tuple[str, ...] = STRUCTURES,
                      seed: int = 0) -> TreeCounts:
    """Write ``frames`` frames: ``multilabel_share`` of them in ``multilabel``, the rest spread over the structure folders."""
    rng = np.random.default_rng(seed)
    n_multi = round(frames * multilabel_share)
    per_structure: Counter[str] = Counter()
    numbers: Counter[tuple[str, int]] = Counter()

    def place(folder: str, i: int) -> tuple[Path, str]:
        surgery = i % surgeries + 1
        number = numbers[folder, surgery]
        numbers[folder, surgery] += 1
        return root / folder / f"{surgery:02d}", f"{number:02d}"

    for i in range(frames - n_multi):
        structure = structures[i % len(structures)]
        folder, number = place(structure, i // len(structures))
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / f"image{number}.png"), _frame(rng, size))
        cv2.imwrite(str(folder / f"mask{number}.png"), _mask(rng, size))
        per_structure[structure] += 1
    for i in range(n_multi):
        folder, number = place("multilabel", i)
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / f"image{number}.png"), _frame(rng, size))
        shown = set(rng.choice(len(structures), size=int(rng.integers(1, 5)), replace=False).tolist())
        for j, structure in enumerate(structures):
            mask = _mask(rng, size) if j in shown else np.zeros((size[1], size[0]), np.uint8)
            cv2.imwrite(str(folder / f"mask{number}_{structure}.png"), mask)
            per_structure[structure] += j in shown
    (root / "anno_1" / structures[0] / "01").mkdir(parents=True, exist_ok=True)
    (root / "weak_labels.csv").write_text("image," + ",".join(structures) + "\n")
    return TreeCounts(frames, sum(per_structure.values()), min(surgeries, max(frames, 1)), dict(per_structure))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--frames", type=int, default=13000)
    parser.add_argument("--surgeries", type=int, default=32)
    parser.add_argument("--size", default="1920x1080", help="frame width x height")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    counts = write_dsad_layout(args.root, args.frames, args.surgeries, size=(width, height))
    print(f"wrote {counts.frames} frames of {counts.surgeries} surgeries to {args.root}: {counts.records} records")


if __name__ == "__main__":
    main()
