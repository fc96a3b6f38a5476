"""A real napari viewer under Xvfb opens the sample through the plugin."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.viewer


def _image_box(shot: np.ndarray) -> np.ndarray:
    """Crop a canvas screenshot to the area covered by the image (non-black)."""
    rgb = shot[..., :3].astype(int)
    covered = rgb.sum(-1) > 30
    rows, cols = np.where(covered.any(1))[0], np.where(covered.any(0))[0]
    return shot[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1, :3]


def _grey_small(image: np.ndarray, size=(64, 64)) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(np.ascontiguousarray(image)).convert("L").resize(size, Image.BILINEAR), float)


def test_sample_opens_in_viewer_and_looks_like_the_slide(make_napari_viewer, sample_slide_path):
    from napari_stpredict.io.slide import open_slide

    viewer = make_napari_viewer(show=True)
    layers = viewer.open(str(sample_slide_path), plugin="napari-stpredict")
    assert len(layers) == 1
    layer = layers[0]
    assert layer.multiscale and layer.rgb
    assert tuple(layer.scale) == pytest.approx((0.688, 0.688))
    viewer.reset_view()
    shot = viewer.screenshot(canvas_only=True, flash=False)
    shown = _image_box(shot)
    with open_slide(sample_slide_path) as slide:
        thumb = slide.thumbnail(512)
    a, b = _grey_small(shown).ravel(), _grey_small(thumb).ravel()
    r = np.corrcoef(a, b)[0, 1]
    assert r > 0.8, f"canvas resembles the slide thumbnail only with r={r:.2f}"
    # and an unrelated image does not: the tissue pattern flipped upside down
    r_flipped = np.corrcoef(a, _grey_small(thumb[::-1]).ravel())[0, 1]
    assert r_flipped < r - 0.3


def test_open_sample_menu_entry(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-stpredict", "her2st_c2")
    assert viewer.layers[0].name == "her2st_C2"
    assert viewer.layers[0].metadata["slide"]["mpp_x"] == pytest.approx(0.688)


def test_corrupt_slide_raises_a_clear_error_in_the_viewer(make_napari_viewer, tmp_path):
    bad = tmp_path / "truncated.svs"
    bad.write_bytes(b"II*\x00" + b"\x00" * 64)
    viewer = make_napari_viewer()
    with pytest.raises(Exception, match="truncated.svs"):
        viewer.open(str(bad), plugin="napari-stpredict")
    assert len(viewer.layers) == 0
