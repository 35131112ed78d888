"""Words for where a binary mask lies and what shape it has (position, size, elongation, orientation).

The teacher receives these words instead of pixels; the clinical checks and reports reuse them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from cme_vlm.errors import DataError

COMPACT_BELOW = 1.6  # elongation under which a shape has no meaningful direction
_ROWS = ("upper", "", "lower")
_COLS = ("left", "centre", "right")


@dataclass(frozen=True)
class MaskGeometry:
    """Where a mask lies and its shape, in words and numbers (centroid normalised to [0, 1])."""

    position: str
    area_fraction: float
    elongation: float
    orientation: str
    centroid: tuple[float, float]

    def describe(self) -> str:
        """One short sentence, e.g. "An elongated region, oblique, rising to the right, in the lower left, covering 8% of the frame."."""
        if self.orientation == "compact":
            shape = "A compact region"
        else:
            shape = f"An elongated region, {self.orientation},"
        where = "in the centre" if self.position == "centre" else f"in the {self.position}"
        return f"{shape} {where}, covering {self.area_fraction:.0%} of the frame."


def _binary(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise DataError(f"mask has shape {mask.shape}; give a 2-D (height, width) mask.")
    return mask > 0


def _position(cx: float, cy: float) -> str:
    row = _ROWS[min(int(cy * 3), 2)]
    col = _COLS[min(int(cx * 3), 2)]
    if not row:
        return col
    return f"{row} {col}"


def _orientation(angle_deg: float, elongation: float) -> str:
    """``angle_deg``: the major axis against the horizontal, counter-clockwise as seen (y up)."""
    if elongation < COMPACT_BELOW:
        return "compact"
    a = abs(angle_deg)
    if a < 22.5:
        return "horizontal"
    if a > 67.5:
        return "vertical"
    return "oblique, rising to the right" if angle_deg > 0 else "oblique, falling to the right"


def mask_geometry(mask: np.ndarray) -> MaskGeometry:
    """Describe a bool or 0/255 mask of shape (H, W); an empty mask is a ``DataError``."""
    binary = _binary(mask)
    ys, xs = np.nonzero(binary)
    if xs.size == 0:
        raise DataError("mask is empty (no foreground pixel); give a mask that marks the structure.")
    h, w = binary.shape
    cx, cy = float(xs.mean() + 0.5) / w, float(ys.mean() + 0.5) / h
    # covariance in a y-up frame, so a positive angle means rising to the right as seen
    dx, dy = xs - xs.mean(), -(ys - ys.mean())
    cov = np.cov(np.stack([dx, dy]).astype(np.float64)) if xs.size > 1 else np.zeros((2, 2))
    cov = cov + np.eye(2) / 12.0  # a pixel's own extent keeps thin or single-pixel masks finite
    evals, evecs = np.linalg.eigh(cov)
    elongation = float(math.sqrt(evals[1] / evals[0]))
    major = evecs[:, 1]
    angle = math.degrees(math.atan2(major[1], major[0]))
    angle = (angle + 90.0) % 180.0 - 90.0  # an axis has no direction: fold into [-90, 90)
    return MaskGeometry(
        position=_position(cx, cy),
        area_fraction=float(xs.size) / (h * w),
        elongation=elongation,
        orientation=_orientation(angle, elongation),
        centroid=(cx, cy),
    )
