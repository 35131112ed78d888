"""The visual prompt: the frame resized to the model's resolution with a semi-transparent mask overlay."""

from __future__ import annotations

import os

import cv2
import numpy as np

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no version check over the network
import albumentations as A  # noqa: E402

from cme_vlm.errors import DataError  # noqa: E402
from cme_vlm.schema import OverlayConfig  # noqa: E402


def build_overlay(frame: np.ndarray, mask: np.ndarray, colour: list[int] | tuple[int, ...], alpha: float) -> np.ndarray:
    """Blend ``colour`` into the mask pixels of ``frame``: ``(1 - alpha) * frame + alpha * colour``.

    ``frame``: [H, W, 3] uint8; ``mask``: [H, W] bool. Pixels outside the mask are untouched;
    ``alpha == 0`` returns a copy of the frame.
    """
    if frame.shape[:2] != mask.shape:
        raise DataError(f"overlay: mask size {mask.shape} differs from frame size {frame.shape[:2]}.")
    out = frame.copy()
    if alpha <= 0:
        return out
    tint = np.asarray(colour, dtype=np.float32)
    blended = (1.0 - alpha) * frame[mask].astype(np.float32) + alpha * tint
    out[mask] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    return out


def resize_pair(frame: np.ndarray, mask: np.ndarray, size: int | tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Resize frame (bilinear, area when shrinking) and mask (nearest, stays binary) together.

    ``size``: a side for a square, or (height, width). Returns ([h, w, 3] uint8, [h, w] bool).
    """
    h, w = (size, size) if isinstance(size, int) else size
    resize = A.Resize(
        height=h,
        width=w,
        interpolation=cv2.INTER_LINEAR,
        mask_interpolation=cv2.INTER_NEAREST,
        area_for_downscale="image",
    )
    out = resize(image=frame, mask=mask.astype(np.uint8))
    return out["image"], out["mask"].astype(bool)


def visual_prompt(
    frame: np.ndarray,
    mask: np.ndarray,
    overlay: OverlayConfig,
    size: int,
    structure_colour: list[int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """What the student sees, and the mask aligned with it, both ``size`` x ``size``.

    The overlay colour is the config's, or ``structure_colour`` when ``overlay.use_structure_colour``;
    with ``overlay.enabled`` false the frame is returned without tint (the ablation).
    """
    small_frame, small_mask = resize_pair(frame, mask, size)
    if not overlay.enabled:
        return small_frame, small_mask
    colour = structure_colour if overlay.use_structure_colour and structure_colour else overlay.colour
    return build_overlay(small_frame, small_mask, colour, overlay.alpha), small_mask
