"""Small frames-and-masks trees that the data tests write themselves."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def write_frame(path: Path, value: int = 120, size: tuple[int, int] = (20, 16)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.full((size[1], size[0], 3), value, np.uint8)
    rgb[..., 0] = np.arange(size[0], dtype=np.uint8)[None, :] * 7
    Image.fromarray(rgb).save(path)


def write_mask(path: Path, size: tuple[int, int] = (20, 16), box: tuple[int, int, int, int] = (2, 2, 9, 9)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    m = np.zeros((size[1], size[0]), np.uint8)
    m[box[1] : box[3], box[0] : box[2]] = 255
    Image.fromarray(m, mode="L").save(path)


def write_manifest_tree(root: Path, n_procedures: int = 3, frames_per: int = 2) -> Path:
    """A valid little manifest tree: each frame has a pancreas mask, even frames also an IMV mask."""
    rows = []
    for p in range(n_procedures):
        for f in range(frames_per):
            frame = f"img/p{p}/f{f}.png"
            write_frame(root / frame, value=40 * f + p)
            masks = {"pancreas": f"msk/p{p}/f{f}_pancreas.png"}
            if f % 2 == 0:
                masks["IMV"] = f"msk/p{p}/f{f}_imv.png"
            for rel in masks.values():
                write_mask(root / rel)
            rows.append({"frame": frame, "masks": masks, "procedure": f"P{p}", "side": "left", "phase": "vascular ligation"})
    manifest = root / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest


def write_dsad_tree(root: Path) -> None:
    """DSAD layout read with the CME registry: two registry structures (one frame shared), an unknown folder, two
    multilabel frames (one new, one repeating a pancreas frame) and the extras that are not read."""
    for patient in ("01", "03"):
        for n in range(2):
            write_frame(root / "pancreas" / patient / f"image{n:02d}.png", value=10 * n + int(patient))
            write_mask(root / "pancreas" / patient / f"mask{n:02d}.png")
    # the same frame (same pixels) under another structure and another number
    write_frame(root / "intestinal_veins" / "01" / "image07.png", value=10 * 1 + 1)
    write_mask(root / "intestinal_veins" / "01" / "mask07.png", box=(10, 10, 15, 15))
    write_frame(root / "colon" / "01" / "image00.png")
    write_mask(root / "colon" / "01" / "mask00.png")
    write_mask(root / "anno_1" / "pancreas" / "01" / "mask00.png", box=(0, 0, 0, 0))
    # multilabel: a new frame with two registry structures, one out of view (all 0) and one the registry lacks
    write_frame(root / "multilabel" / "03" / "image00.png", value=77)
    write_mask(root / "multilabel" / "03" / "mask00_pancreas.png")
    write_mask(root / "multilabel" / "03" / "mask00_intestinal_veins.png", box=(10, 10, 15, 15))
    write_mask(root / "multilabel" / "03" / "mask00_duodenum.png", box=(0, 0, 0, 0))
    write_mask(root / "multilabel" / "03" / "mask00_colon.png")
    # ... and the pixels of pancreas/01/image00.png again, with its pancreas mask
    write_frame(root / "multilabel" / "01" / "image04.png", value=1)
    write_mask(root / "multilabel" / "01" / "mask04_pancreas.png", box=(3, 3, 9, 9))
    (root / "weak_labels.csv").write_text("image,colon\n")


class Trees:
    """The writers above, handed to tests through the ``trees`` fixture."""

    frame = staticmethod(write_frame)
    mask = staticmethod(write_mask)
    manifest = staticmethod(write_manifest_tree)
    dsad = staticmethod(write_dsad_tree)


@pytest.fixture
def trees() -> type[Trees]:
    return Trees
