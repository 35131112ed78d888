from __future__ import annotations

import numpy as np
import pytest

from cme_vlm.data.geometry import mask_geometry
from cme_vlm.errors import DataError


def _blank(h: int = 90, w: int = 120) -> np.ndarray:
    return np.zeros((h, w), dtype=bool)


def test_compact_square_in_upper_left():
    m = _blank()
    m[5:20, 5:20] = True
    g = mask_geometry(m)
    assert g.position == "upper left"
    assert g.orientation == "compact"
    assert g.elongation == pytest.approx(1.0, abs=0.05)
    assert g.area_fraction == pytest.approx(225 / (90 * 120))
    assert g.centroid == pytest.approx((12.5 / 120, 12.5 / 90))
    assert g.describe() == "A compact region in the upper left, covering 2% of the frame."


def test_horizontal_band_in_centre_accepts_0_255():
    m = np.zeros((90, 120), dtype=np.uint8)
    m[43:47, 10:110] = 255
    g = mask_geometry(m)
    assert g.position == "centre"
    assert g.orientation == "horizontal"
    assert g.elongation > 10
    assert "horizontal" in g.describe() and "centre" in g.describe()


def test_vertical_band_on_the_right():
    m = _blank()
    m[10:80, 100:104] = True
    g = mask_geometry(m)
    assert g.position == "right"
    assert g.orientation == "vertical"


@pytest.mark.parametrize(
    ("flip", "expected"),
    [(False, "oblique, falling to the right"), (True, "oblique, rising to the right")],
)
def test_diagonal_direction_follows_image_axes(flip: bool, expected: str):
    m = _blank(100, 100)
    for i in range(5, 95):
        m[i, max(i - 2, 0) : i + 2] = True  # top-left to bottom-right: falls as seen
    if flip:
        m = m[::-1]
    g = mask_geometry(m)
    assert g.orientation == expected
    assert g.position == "centre"


def test_lower_right_position():
    m = _blank()
    m[70:88, 95:118] = True
    assert mask_geometry(m).position == "lower right"


def test_single_pixel_is_finite():
    m = _blank()
    m[0, 0] = True
    g = mask_geometry(m)
    assert np.isfinite(g.elongation) and g.orientation == "compact"


def test_empty_mask_is_an_error():
    with pytest.raises(DataError, match="empty"):
        mask_geometry(_blank())


def test_non_2d_mask_is_an_error():
    with pytest.raises(DataError, match="2-D"):
        mask_geometry(np.ones((4, 4, 3), dtype=bool))
