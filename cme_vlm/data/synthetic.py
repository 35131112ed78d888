"""Synthetic CME scenes: a seeded, procedural stand-in for private clinical frames and masks.

Real CME video cannot ship with the project, so the embedded demo and the tests run on
endoscopic-looking scenes drawn here: pinkish tissue texture, specular highlights, the
circular vignette of the scope, one or two grey instrument shafts, and each annotated
structure drawn from its registry ``appearance`` (shape, colour, scale) at a placement that
depends on the structure and is mirrored between left- and right-sided CME. They let the
pipeline run end to end; they carry no clinical truth.

The tree written by ``write_synthetic_tree``::

    frames/<procedure>/<frame>.png               RGB
    masks/<procedure>/<frame>__<structure>.png   L, 0/255
    manifest.jsonl                               one line per frame (see cme_vlm.data.frames)
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from cme_vlm import atomic
from cme_vlm.anatomy import Anatomy
from cme_vlm.config import save_config
from cme_vlm.data.shapes import DEPTH, Pose, draw
from cme_vlm.errors import DataError
from cme_vlm.schema import ExperimentConfig, Side

PHASES = ("medial-to-lateral dissection", "vascular ligation", "mesocolic dissection", "lateral mobilisation", "flexure mobilisation")
MANIFEST_NAME = "manifest.jsonl"
TISSUE = np.array([188, 104, 100], np.float32)
MIN_MASK_FRACTION = 0.004  # a drawn structure smaller than this is redrawn


@dataclass(frozen=True)
class Scene:
    """What one synthetic frame shows."""

    index: int
    procedure: str
    frame: str
    side: str
    phase: str
    structures: tuple[str, ...]


def _unit(*parts: object) -> float:
    """A stable number in [0, 1) from its parts (the same on every machine)."""
    digest = hashlib.sha256("\x00".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _pick_structures(rng: np.random.Generator, valid: list[str], share: dict[str, float], counts: dict[str, int], k: int) -> list[str]:
    """Choose ``k`` structures, those furthest below their registry share first (ties broken at random)."""
    total = sum(counts.values()) + k
    deficit = {s: share[s] * total - counts[s] + rng.uniform(0, 0.5) for s in valid}
    chosen = sorted(valid, key=lambda s: -deficit[s])[:k]
    for s in chosen:
        counts[s] += 1
    return chosen


def plan_scenes(cfg: ExperimentConfig) -> list[Scene]:
    """Procedures, sides, phases and structures of every frame; proportions follow ``annotation_count``."""
    syn, anatomy = cfg.data.synthetic, Anatomy(cfg.anatomy)
    if syn.n_frames < 1 or syn.n_procedures < 1 or syn.max_structures_per_frame < 1:
        raise DataError("data.synthetic: n_frames, n_procedures and max_structures_per_frame must be at least 1.")
    rng = np.random.default_rng([syn.seed, 0])
    valid = {side: [k for k in anatomy.keys if side in anatomy.sides_for(k)] for side in (Side.left, Side.right)}
    sides = [side for side in (Side.left, Side.right) if valid[side]]
    n_proc = min(syn.n_procedures, syn.n_frames)
    width = max(2, len(str(n_proc - 1)))
    first = int(rng.integers(len(sides)))
    proc_side = [sides[(i + first) % len(sides)] for i in range(n_proc)]
    share, counts = anatomy.proportions(), dict.fromkeys(anatomy.keys, 0)
    bounds = [round(i * syn.n_frames / n_proc) for i in range(n_proc + 1)]
    scenes = []
    for p in range(n_proc):
        length = bounds[p + 1] - bounds[p]
        for j, index in enumerate(range(bounds[p], bounds[p + 1])):
            side = proc_side[p]
            k = int(rng.integers(1, min(syn.max_structures_per_frame, len(valid[side])) + 1))
            chosen = _pick_structures(rng, valid[side], share, counts, k)
            phase = PHASES[j * len(PHASES) // length]
            scenes.append(Scene(index, f"proc_{p:0{width}d}", f"frame_{index:05d}", side.value, phase, tuple(chosen)))
    return scenes


def _pose(key: str, side: str, rng: np.random.Generator, h: int, w: int, scale: float) -> Pose:
    """Each structure has its own home, left of centre; right-sided CME mirrors it left to right."""
    x = 0.28 + 0.17 * _unit(key, "x") + rng.uniform(-0.06, 0.06)
    y = 0.32 + 0.36 * _unit(key, "y") + rng.uniform(-0.07, 0.07)
    angle = math.pi * (0.1 + 0.3 * _unit(key, "angle")) + rng.uniform(-0.12, 0.12)
    if side == Side.right.value:
        x, angle = 1.0 - x, math.pi - angle
    extent = scale * min(h, w) * rng.uniform(0.85, 1.15)
    return Pose(x * w, y * h, angle, extent)


def _noise(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    """Smooth noise in [0, 1] with features about ``cell`` pixels wide."""
    small = rng.random((max(2, h // cell), max(2, w // cell))).astype(np.float32)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC).clip(0, 1)


@functools.lru_cache(maxsize=4)
def _scope(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """The vignette [H, W] (light falloff, black outside the scope's circle) and the visible area."""
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    r = np.hypot(xx - w / 2, yy - h / 2) / (0.5 * math.hypot(h, w) * 0.9)
    vignette = np.clip(1 - 0.55 * r**4, 0, 1) * np.clip((1.0 - r) * 25, 0, 1)
    return vignette, r < 0.96


def _paint_instruments(rng: np.random.Generator, image: np.ndarray, masks: dict[str, np.ndarray]) -> None:
    """One or two grey shafts from the lower edge; one that would hide half a structure is left out."""
    h, w = image.shape[:2]
    for _ in range(int(rng.integers(1, 3))):
        start = (int(rng.uniform(-0.1, 1.1) * w), int(h * 1.05))
        end = (int(rng.uniform(0.25, 0.75) * w), int(rng.uniform(0.35, 0.7) * h))
        thickness = max(6, int(0.08 * min(h, w)))
        shaft = np.zeros((h, w), np.uint8)
        cv2.line(shaft, start, end, 1, thickness, cv2.LINE_AA)
        cv2.circle(shaft, end, int(thickness * 0.7), 1, -1)
        hidden = shaft.astype(bool)
        if any((m & ~hidden).sum() < 0.5 * m.sum() for m in masks.values()):
            continue
        grey = rng.uniform(110, 170)
        stripe = np.zeros((h, w), np.float32)
        cv2.line(stripe, start, end, 1.0, max(2, thickness // 4), cv2.LINE_AA)
        image[hidden] = (grey + 60 * stripe[hidden])[:, None]
        for m in masks.values():
            m &= ~hidden


def _paint_highlights(rng: np.random.Generator, image: np.ndarray) -> None:
    h, w = image.shape[:2]
    spots = np.zeros((h, w), np.float32)
    for _ in range(int(rng.integers(3, 9))):
        centre = (int(rng.uniform(0.15, 0.85) * w), int(rng.uniform(0.15, 0.85) * h))
        axes = (int(rng.integers(2, 7)), int(rng.integers(1, 4)))
        cv2.ellipse(spots, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1.0, -1)
    spots = cv2.GaussianBlur(spots, (0, 0), 1.5)
    image += (255 - image) * np.clip(spots * 1.5, 0, 1)[..., None]


def render_scene(cfg: ExperimentConfig, scene: Scene) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The frame ([H, W, 3] uint8 RGB) and one bool mask per structure of ``scene``."""
    syn, anatomy = cfg.data.synthetic, Anatomy(cfg.anatomy)
    h, w = syn.height, syn.width
    rng = np.random.default_rng([syn.seed, 1, scene.index])
    vignette, visible = _scope(h, w)
    image = TISSUE * (0.8 + 0.35 * _noise(rng, h, w, 24)[..., None]) + rng.uniform(-12, 12, 3)
    image = image.astype(np.float32)
    masks: dict[str, np.ndarray] = {}
    order = sorted(scene.structures, key=lambda k: DEPTH[anatomy[k].appearance.shape])
    for key in order:
        look = anatomy[key].appearance
        for _ in range(6):
            drawing = draw(look.shape, rng, (h, w), _pose(key, scene.side, rng, h, w, look.scale))
            if (drawing.mask & visible).mean() >= MIN_MASK_FRACTION:
                break
        colour = np.asarray(look.colour, np.float32) + rng.uniform(-10, 10, 3)
        inked = drawing.ink > 0
        texture = colour * (0.8 + 0.4 * _noise(rng, h, w, 10)[inked][:, None])
        ink, shine = drawing.ink[inked][:, None], drawing.shine[inked][:, None]
        image[inked] = image[inked] * (1 - ink) + texture * ink + 255 * shine
        masks[key] = drawing.mask & visible
    _paint_instruments(rng, image, masks)
    image = cv2.GaussianBlur(image, (3, 3), 0)
    _paint_highlights(rng, image)
    image = image * vignette[..., None] + 2.5 * rng.standard_normal(image.shape, dtype=np.float32)
    return np.clip(image, 0, 255).astype(np.uint8), masks


def _write_png(path: Path, array: np.ndarray) -> None:
    ok, data = cv2.imencode(".png", cv2.cvtColor(array, cv2.COLOR_RGB2BGR) if array.ndim == 3 else array)
    if not ok:
        raise DataError(f"could not encode '{path}' as PNG.")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.tobytes())


def write_synthetic_tree(cfg: ExperimentConfig, out: str | Path, on_frame: Callable[[], None] | None = None) -> Path:
    """Write the frames-and-masks tree, its manifest and the resolved config to ``out``, atomically.

    Returns the manifest path. ``on_frame`` is called after each frame (progress bars).
    """
    scenes = plan_scenes(cfg)
    lines = []
    with atomic.atomic_dir(out) as tmp:
        for scene in scenes:
            image, masks = render_scene(cfg, scene)
            frame_rel = f"frames/{scene.procedure}/{scene.frame}.png"
            _write_png(tmp / frame_rel, image)
            mask_rels = {}
            for key, mask in masks.items():
                mask_rels[key] = f"masks/{scene.procedure}/{scene.frame}__{key}.png"
                _write_png(tmp / mask_rels[key], mask.astype(np.uint8) * 255)
            row = {"frame": frame_rel, "masks": mask_rels, "procedure": scene.procedure, "side": scene.side, "phase": scene.phase}
            lines.append(json.dumps(row, sort_keys=True))
            if on_frame:
                on_frame()
        (tmp / MANIFEST_NAME).write_text("\n".join(lines) + "\n", encoding="utf-8")
        save_config(cfg, tmp)
    return Path(out) / MANIFEST_NAME
