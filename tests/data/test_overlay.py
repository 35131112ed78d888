from __future__ import annotations

import numpy as np
import pytest

from cme_vlm.data.overlay import build_overlay, resize_pair, visual_prompt
from cme_vlm.errors import DataError
from cme_vlm.schema import OverlayConfig


@pytest.fixture
def scene() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 200, size=(60, 80, 3), dtype=np.uint8)  # never pure green
    mask = np.zeros((60, 80), dtype=bool)
    mask[10:30, 20:50] = True
    mask[40:55, 5:12] = True
    return frame, mask


def test_overlay_changes_exactly_the_mask_pixels(scene):
    frame, mask = scene
    out = build_overlay(frame, mask, [0, 255, 0], 0.4)
    changed = np.any(out != frame, axis=-1)
    np.testing.assert_array_equal(changed, mask)
    expected = np.rint(0.6 * frame[mask].astype(float) + 0.4 * np.array([0, 255, 0]))
    np.testing.assert_array_equal(out[mask], expected.astype(np.uint8))
    assert out[mask][:, 1].mean() > frame[mask][:, 1].mean()


def test_alpha_zero_and_disabled_return_the_frame(scene):
    frame, mask = scene
    np.testing.assert_array_equal(build_overlay(frame, mask, [0, 255, 0], 0.0), frame)
    image, small = visual_prompt(frame, mask, OverlayConfig(enabled=False), 80)
    plain, _ = resize_pair(frame, mask, 80)
    np.testing.assert_array_equal(image, plain)
    assert small.dtype == bool


def test_size_mismatch_is_an_error(scene):
    frame, mask = scene
    with pytest.raises(DataError, match="differs"):
        build_overlay(frame, mask[:-1], [0, 255, 0], 0.4)


@pytest.mark.parametrize("size", [32, 224, (50, 100)])
def test_resize_keeps_frame_and_mask_aligned(size):
    # the frame carries the mask as a bright block, so alignment is visible in the image itself
    frame = np.zeros((120, 160, 3), dtype=np.uint8)
    mask = np.zeros((120, 160), dtype=bool)
    mask[30:90, 40:100] = True
    frame[mask] = 255
    small_frame, small_mask = resize_pair(frame, mask, size)
    h, w = (size, size) if isinstance(size, int) else size
    assert small_frame.shape == (h, w, 3) and small_mask.shape == (h, w)
    assert set(np.unique(small_mask)) == {False, True}
    bright = small_frame[..., 0] > 127
    agreement = (bright == small_mask).mean()
    assert agreement > 0.97
    assert small_mask.mean() == pytest.approx(mask.mean(), abs=0.03)


def test_visual_prompt_tints_exactly_the_returned_mask(scene):
    frame, mask = scene
    cfg = OverlayConfig(colour=[255, 0, 255], alpha=0.5, use_structure_colour=True)
    image, small = visual_prompt(frame, mask, cfg, 48, structure_colour=[0, 0, 255])
    plain, _ = resize_pair(frame, mask, 48)
    np.testing.assert_array_equal(np.any(image != plain, axis=-1), small)
    assert image[small][:, 2].mean() > plain[small][:, 2].mean()  # the structure's blue, not magenta
    assert image[small][:, 0].mean() < plain[small][:, 0].mean() + 1
