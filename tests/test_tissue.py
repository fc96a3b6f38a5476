"""Tissue detection on real her2st sections and real SVS slides, plus synthetic edge cases."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from napari_stpredict.errors import TissueMaskError
from napari_stpredict.io.slide import ArraySlide, open_slide
from napari_stpredict.io.st_data import HER2ST_MPP, her2st_sections_with_images
from napari_stpredict.tissue import detect_tissue, slide_tissue_mask


def test_her2st_has_the_six_imaged_sections(her2st_dir):
    assert her2st_sections_with_images(her2st_dir) == ["B4", "C2", "C3", "C4", "C5", "C6"]


@pytest.mark.slow
@pytest.mark.parametrize("section", ["B4", "C2", "C3", "C4", "C5", "C6"])
def test_spot_centres_fall_on_detected_tissue(her2st_dir, section):
    image = next((her2st_dir / "ST-imgs" / section[0] / section).glob("*.jpg"))
    spots = pd.read_csv(her2st_dir / "ST-spotfiles" / f"{section}_selection.tsv", sep="\t")
    spots = spots[spots["selected"] == 1]
    with open_slide(image, mpp=HER2ST_MPP) as slide:
        tissue = slide_tissue_mask(slide)
    inside = tissue.contains(spots[["pixel_x", "pixel_y"]].to_numpy())
    assert inside.mean() >= 0.95, f"{section}: only {inside.mean():.1%} of spots on tissue"
    # Blank glass: the image corners, far from the tissue, and most of the slide.
    h, w = tissue.mask.shape
    for corner in (tissue.mask[: h // 10, : w // 10], tissue.mask[-h // 10 :, -w // 10 :]):
        assert corner.mean() < 0.01
    assert 0.05 < tissue.fraction < 0.5


@pytest.mark.parametrize("name", ["CMU-1-Small-Region.svs", "tcga-cr-7395-01a-01-ts1.svs"])
def test_svs_masks_are_plausible_against_the_thumbnail(wsi_dir, name):
    with open_slide(wsi_dir / name) as slide:
        tissue = slide_tissue_mask(slide, max_size=512)
        thumb = slide.thumbnail(512).astype(float)
    assert tissue.mask.shape == thumb.shape[:2]
    assert 0.2 < tissue.fraction < 0.9
    brightness = thumb.mean(axis=-1)
    saturation = thumb.max(axis=-1) - thumb.min(axis=-1)
    # Tissue is darker and more coloured than what the mask leaves out.
    assert brightness[tissue.mask].mean() < brightness[~tissue.mask].mean() - 25
    assert saturation[tissue.mask].mean() > saturation[~tissue.mask].mean() + 20
    # Nearly all strongly stained pixels are inside the mask.
    stained = saturation > 60
    assert tissue.mask[stained].mean() > 0.97


def _synthetic_slide_image() -> np.ndarray:
    rng = np.random.default_rng(1)
    img = np.full((400, 600, 3), (242, 240, 244), np.uint8)  # glass
    img[100:300, 100:300] = (200, 120, 180)  # eosin-pink tissue
    img[100:300, 100:300] += rng.integers(0, 20, (200, 200, 3), dtype=np.uint8)
    img[150:170, 150:170] = (90, 60, 140)  # nuclei cluster
    img[50:70, 380:580] = (40, 150, 60)  # green pen stroke on glass
    img[320:340, 380:580] = (40, 60, 170)  # blue pen stroke on glass
    img[360:380, 400:500] = (10, 10, 10)  # black ink
    return img


def test_pen_marks_and_glass_are_excluded():
    img = _synthetic_slide_image()
    mask = detect_tissue(img, mpp=4.0)
    assert mask[110:290, 110:290].mean() > 0.98
    assert not mask[50:70, 380:580].any()
    assert not mask[320:340, 380:580].any()
    assert not mask[360:380, 400:500].any()
    assert mask[:, 320:].mean() < 0.01


def test_blank_glass_gives_an_empty_mask_and_a_clear_error():
    glass = np.full((300, 300, 3), 241, np.uint8)
    assert not detect_tissue(glass, mpp=5.0).any()
    slide = ArraySlide(glass, mpp=0.5, name="blank.tiff")
    with pytest.raises(TissueMaskError, match="blank.tiff.*no tissue"):
        slide_tissue_mask(slide)


def test_bad_thumbnail_is_rejected():
    with pytest.raises(TissueMaskError, match="uint8"):
        detect_tissue(np.zeros((10, 10), np.float32))


def test_mask_maps_level0_points():
    img = _synthetic_slide_image()
    slide = ArraySlide(img.repeat(4, 0).repeat(4, 1), mpp=1.0)  # 2400 x 1600 level 0
    tissue = slide_tissue_mask(slide, max_size=600)
    assert tissue.l0_per_th == (4.0, 4.0)
    assert tissue.contains([[800, 800], [2000, 200], [-5, 10], [10_000, 10]]).tolist() == [True, False, False, False]


def _scikit_image_reference(thumb: np.ndarray, mpp: float, closing_um: float = 40.0) -> np.ndarray:
    """`detect_tissue` as it was written with scikit-image (before it moved to scipy)."""
    from skimage import filters, morphology

    from napari_stpredict.tissue import _MAX_CLOSING_RADIUS, _glass_colour, _optical_density, _pen_and_dark

    rgb = thumb[..., :3]
    od = _optical_density(rgb, _glass_colour(rgb))
    excluded = _pen_and_dark(rgb)
    threshold = float(np.clip(filters.threshold_otsu(od[~excluded]), 0.08, 0.3))
    tissue = (od > threshold) & ~excluded
    radius = max(1, int(round(closing_um / mpp)))
    if radius <= _MAX_CLOSING_RADIUS:
        tissue = morphology.closing(tissue, morphology.disk(radius))
    else:
        factor = -(-radius // _MAX_CLOSING_RADIUS)
        h, w = tissue.shape
        padded = np.zeros((-(-h // factor) * factor, -(-w // factor) * factor), bool)
        padded[:h, :w] = tissue
        coarse = padded.reshape(padded.shape[0] // factor, factor, padded.shape[1] // factor, factor).any(axis=(1, 3))
        coarse = morphology.closing(coarse, morphology.disk(max(1, round(radius / factor))))
        tissue = tissue | np.repeat(np.repeat(coarse, factor, axis=0), factor, axis=1)[:h, :w]
    tissue &= ~excluded
    tissue = morphology.remove_small_holes(tissue, max_size=max(1, int(60_000.0 / mpp**2)))
    return morphology.remove_small_objects(tissue, max_size=max(1, int(40_000.0 / mpp**2)))


@pytest.mark.slow  # up to 5 s each on 2 cores: scikit-image's disk filters are the slow part
@pytest.mark.parametrize("name", ["her2st C2 (the sample)", "CMU-1-Small-Region.svs", "tcga-cr-7395-01a-01-ts1.svs"])
@pytest.mark.parametrize("size, closing_um", [(1024, 40.0), (400, 40.0), (1024, 400.0)])
def test_tissue_mask_equals_the_scikit_image_one(wsi_dir, name, size, closing_um):
    """The scipy closing, hole filling, speck removal and Otsu threshold give the masks the
    scikit-image filters gave, pixel for pixel (also the coarse path of a wide closing)."""
    from napari_stpredict._resources import SAMPLE_SLIDE, sample_data_dir

    path = sample_data_dir() / SAMPLE_SLIDE if name.startswith("her2st") else wsi_dir / name
    with open_slide(path) as slide:
        thumb = slide.thumbnail(size)
        # The TCGA slide records no mpp: detect_tissue's own default (20 µm per pixel).
        thumb_mpp = slide.mpp_x * slide.dimensions[0] / thumb.shape[1] if slide.mpp_x else 20.0
    got = detect_tissue(thumb, mpp=thumb_mpp, closing_um=closing_um)
    assert got.any() and (closing_um > 40 or not got.all())  # a 400 µm closing fills a small region
    np.testing.assert_array_equal(got, _scikit_image_reference(thumb, thumb_mpp, closing_um))


def test_disk_closing_and_otsu_equal_scikit_image_on_random_masks():
    from scipy import ndimage
    from skimage import filters, morphology

    from napari_stpredict.tissue import disk_closing, otsu_threshold

    rng = np.random.default_rng(0)
    for _ in range(15):
        h, w = rng.integers(5, 200, 2)
        radius = int(rng.integers(1, 33))  # also radii wider than the image (mirrored border)
        field = ndimage.gaussian_filter(rng.random((h, w)), rng.uniform(0.5, 4))
        mask = field > rng.uniform(0.45, 0.55)
        np.testing.assert_array_equal(disk_closing(mask, radius), morphology.closing(mask, morphology.disk(radius)))
        assert otsu_threshold(field) == pytest.approx(filters.threshold_otsu(field), abs=1e-12)
    assert not disk_closing(np.zeros((9, 9), bool), 3).any()
