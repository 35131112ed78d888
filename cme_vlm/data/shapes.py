"""How the synthetic scene generator draws one structure: a binary mask and the ink that paints it.

One drawing per ``Shape`` of the registry's ``appearance``; the pose (anchor, angle, extent) is
chosen by the scene. Masks are bool [H, W]; ink is float32 [H, W] in [0, 1] (the opacity of the
structure's colour); shine is float32 [H, W] (a whitish sheen added on top).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from cme_vlm.schema import Shape


@dataclass(frozen=True)
class Pose:
    """Where a structure lies: centre in pixels, major-axis angle (radians, image y down), size in pixels."""

    cx: float
    cy: float
    angle: float
    extent: float


@dataclass
class Drawing:
    mask: np.ndarray
    ink: np.ndarray
    shine: np.ndarray


def _centreline(rng: np.random.Generator, pose: Pose, length: float, n: int = 32) -> np.ndarray:
    """Points [n, 2] of a gently bent curve through the pose's centre along its angle."""
    t = np.linspace(-1.0, 1.0, n)[:, None]
    direction = np.array([math.cos(pose.angle), -math.sin(pose.angle)])
    normal = np.array([-direction[1], direction[0]])
    bend = rng.uniform(-0.18, 0.18) * length
    return np.array([pose.cx, pose.cy]) + t * length / 2 * direction + (1 - t**2) * bend * normal


def _band(rng: np.random.Generator, shape: tuple[int, int], pose: Pose, length: float, half_width: float) -> np.ndarray:
    """A filled band of varying width around a bent centreline."""
    centre = _centreline(rng, pose, length)
    tangent = np.gradient(centre, axis=0)
    normal = np.stack([-tangent[:, 1], tangent[:, 0]], axis=1)
    normal /= np.linalg.norm(normal, axis=1, keepdims=True)
    widths = half_width * (0.75 + 0.5 * rng.random()) * (0.85 + 0.3 * np.sin(np.linspace(0, math.pi * rng.uniform(1, 3), len(centre))))
    outline = np.concatenate([centre + normal * widths[:, None], (centre - normal * widths[:, None])[::-1]])
    mask = np.zeros(shape, np.uint8)
    cv2.fillPoly(mask, [np.round(outline).astype(np.int32)], 1)
    return mask.astype(bool)


def _blob_outline(rng: np.random.Generator, pose: Pose, n: int = 64) -> np.ndarray:
    """A smooth, irregular ellipse outline [n, 2] (radial harmonics on an ellipse)."""
    theta = np.linspace(0, 2 * math.pi, n, endpoint=False)
    a, b = pose.extent * 0.5, pose.extent * 0.34
    radius = a * b / np.sqrt((b * np.cos(theta)) ** 2 + (a * np.sin(theta)) ** 2)
    for k in (2, 3, 4):
        radius *= 1 + rng.uniform(0.02, 0.08) * np.cos(k * theta + rng.uniform(0, 2 * math.pi))
    phi = theta - pose.angle
    return np.stack([pose.cx + radius * np.cos(phi), pose.cy + radius * np.sin(phi)], axis=1)


def _plane(rng: np.random.Generator, shape: tuple[int, int], pose: Pose) -> Drawing:
    mask = _band(rng, shape, pose, 1.7 * pose.extent, 0.2 * pose.extent)
    ink = mask * np.float32(0.85)
    return Drawing(mask, ink, np.zeros(shape, np.float32))


def _web(rng: np.random.Generator, shape: tuple[int, int], pose: Pose) -> Drawing:
    mask = _band(rng, shape, pose, 1.5 * pose.extent, 0.17 * pose.extent)
    fibres = np.zeros(shape, np.float32)
    centre = _centreline(rng, pose, 1.5 * pose.extent, n=48)
    across = pose.angle + math.pi / 2
    for x, y in centre:  # fibres stretched across the plane, as under traction
        for _ in range(2):
            swing = across + rng.uniform(-0.5, 0.5)
            reach = pose.extent * rng.uniform(0.1, 0.25)
            dx, dy = reach * math.cos(swing), -reach * math.sin(swing)
            start = (int(x - dx + rng.normal(0, 3)), int(y - dy + rng.normal(0, 3)))
            cv2.line(fibres, start, (int(x + dx), int(y + dy)), 1.0, 1, cv2.LINE_AA)
    ink = np.where(mask, np.maximum(0.3, fibres), 0).astype(np.float32)
    return Drawing(mask, ink, np.zeros(shape, np.float32))


def _tube(rng: np.random.Generator, shape: tuple[int, int], pose: Pose) -> Drawing:
    centre = np.round(_centreline(rng, pose, 1.8 * pose.extent)).astype(np.int32)
    thickness = max(4, int(0.13 * pose.extent))
    canvas = np.zeros(shape, np.uint8)
    cv2.polylines(canvas, [centre], False, 1, thickness, cv2.LINE_8)
    shine = np.zeros(shape, np.float32)
    offset = np.array([0, -thickness // 5], np.int32)
    cv2.polylines(shine, [centre + offset], False, 0.45, max(1, thickness // 5), cv2.LINE_AA)
    mask = canvas.astype(bool)
    return Drawing(mask, mask * np.float32(0.95), shine * mask)


def _region(rng: np.random.Generator, shape: tuple[int, int], pose: Pose) -> Drawing:
    canvas = np.zeros(shape, np.uint8)
    cv2.fillPoly(canvas, [np.round(_blob_outline(rng, pose)).astype(np.int32)], 1)
    mask = canvas.astype(bool)
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(np.float32)
    sheen_y = pose.cy - 0.12 * pose.extent
    sheen = np.exp(-(((xx - pose.cx) ** 2) + (yy - sheen_y) ** 2) / (2 * (0.12 * pose.extent) ** 2))
    return Drawing(mask, mask * np.float32(0.95), (0.25 * sheen * mask).astype(np.float32))


def _lobulated(rng: np.random.Generator, shape: tuple[int, int], pose: Pose) -> Drawing:
    canvas = np.zeros(shape, np.float32)
    a, b = pose.extent * 0.45, pose.extent * 0.3
    ca, sa = math.cos(pose.angle), math.sin(pose.angle)
    for _ in range(int(rng.integers(14, 24))):
        r, t = math.sqrt(rng.random()), rng.uniform(0, 2 * math.pi)
        u, v = a * r * math.cos(t), b * r * math.sin(t)
        centre = (int(pose.cx + u * ca - v * sa), int(pose.cy - u * sa - v * ca))
        radius = max(3, int(pose.extent * rng.uniform(0.09, 0.15)))
        cv2.circle(canvas, centre, radius, 1.0, -1)
        cv2.circle(canvas, centre, radius, 0.55, 1, cv2.LINE_AA)  # darker clefts between lobules
    mask = canvas > 0
    return Drawing(mask, canvas * np.float32(0.95), np.zeros(shape, np.float32))


DRAWERS: dict[Shape, Callable[[np.random.Generator, tuple[int, int], Pose], Drawing]] = {
    Shape.plane: _plane,
    Shape.web: _web,
    Shape.tube: _tube,
    Shape.region: _region,
    Shape.lobulated: _lobulated,
}

DEPTH = {Shape.plane: 0, Shape.region: 1, Shape.lobulated: 1, Shape.tube: 2, Shape.web: 3}  # painting order


def draw(shape: Shape, rng: np.random.Generator, size: tuple[int, int], pose: Pose) -> Drawing:
    """Draw one structure of ``shape`` at ``pose`` on an (H, W) canvas."""
    return DRAWERS[shape](rng, size, pose)
