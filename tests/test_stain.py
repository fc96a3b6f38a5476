"""The stain check on real slides and real non-H&E images: each gets the right verdict."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_stpredict.errors import StainCheckError
from napari_stpredict.io.slide import ArraySlide, open_slide
from napari_stpredict.stain import check_stain

SKIMAGE_DATA = Path(__import__("skimage.data", fromlist=["x"]).__file__).parent


def _thumb(path, mpp=None):
    with open_slide(path, mpp=mpp) as slide:
        return slide.thumbnail(1024)


def _skimage(name):
    return np.asarray(Image.open(SKIMAGE_DATA / name).convert("RGB"))


def dab_recolour(he: np.ndarray) -> np.ndarray:
    """An IHC-like (DAB) version of an H&E image, by Beer-Lambert colour deconvolution.

    Hematoxylin is unmixed with Ruifrok & Johnston's stain vectors; the denser half of it
    is re-rendered as DAB brown (the stained cells of an IHC slide), the rest as a light
    hematoxylin counterstain, and eosin is dropped.
    """
    h_vec = np.array([0.65, 0.70, 0.29])
    e_vec = np.array([0.07, 0.99, 0.11])
    dab_vec = np.array([0.27, 0.57, 0.78])
    m = np.stack([h_vec / np.linalg.norm(h_vec), e_vec / np.linalg.norm(e_vec)])
    m = np.vstack([m, np.cross(m[0], m[1]) / np.linalg.norm(np.cross(m[0], m[1]))])
    od = -np.log10((he.astype(float) + 1) / 256).reshape(-1, 3)
    h = (od @ np.linalg.inv(m))[:, 0].clip(0)
    median = np.percentile(h, 50)
    od_ihc = np.outer(np.minimum(h, median) * 0.6, m[0]) + np.outer(
        (h - median).clip(0) * 2.0, dab_vec / np.linalg.norm(dab_vec)
    )
    return (256 * 10 ** (-od_ihc) - 1).clip(0, 255).reshape(he.shape).astype(np.uint8)


@pytest.fixture(scope="module")
def sample_thumb(sample_slide_path):
    return _thumb(sample_slide_path)


@pytest.mark.parametrize("name, mpp", [("CMU-1-Small-Region.svs", None), ("tcga-cr-7395-01a-01-ts1.svs", 0.5)])
def test_real_he_slides_pass(wsi_dir, name, mpp):
    verdict = check_stain(_thumb(wsi_dir / name, mpp))
    assert verdict.kind == "he" and verdict.ok, verdict


@pytest.mark.slow
def test_sample_and_her2st_images_pass(sample_thumb, her2st_dir):
    assert check_stain(sample_thumb).kind == "he"
    b4 = next((her2st_dir / "ST-imgs" / "B" / "B4").glob("*.jpg"))
    assert check_stain(_thumb(b4, 0.688)).kind == "he"
    # the downscaled A1 image has black padding around the section: still H&E
    assert check_stain(_thumb(her2st_dir / "app_imgs" / "A1_HE_image_dark.png", 3.2)).kind == "he"


def test_fluorescence_slide_is_refused(wsi_dir):
    verdict = check_stain(_thumb(wsi_dir / "ndpi_test3-DAPI-2-387.ndpi"))
    assert verdict.kind == "fluorescence" and not verdict.ok and "fluorescence" in verdict.message


def test_real_ihc_image_and_dab_recolouring_are_refused(sample_thumb):
    ihc = check_stain(_skimage("ihc.png"))  # scikit-image's IHC (DAB + hematoxylin) micrograph
    assert ihc.kind == "dab_brown" and not ihc.ok and "IHC" in ihc.message
    recoloured = dab_recolour(sample_thumb)
    assert check_stain(recoloured).kind == "dab_brown"
    assert check_stain(sample_thumb).kind == "he"  # the same tissue as H&E passes


def test_grayscale_is_refused(sample_thumb):
    gray = np.repeat(np.asarray(Image.fromarray(sample_thumb).convert("L"))[..., None], 3, -1)
    assert check_stain(gray).kind == "grayscale"
    assert check_stain(gray[..., 0]).kind == "grayscale"  # a single-channel array too
    assert check_stain(_skimage("camera.png")).kind == "grayscale"


@pytest.mark.parametrize("name", ["coffee.png", "chelsea.png", "astronaut.png", "retina.jpg"])
def test_photographs_are_refused(name):
    verdict = check_stain(_skimage(name))
    assert not verdict.ok, verdict


def test_blank_is_refused():
    rng = np.random.default_rng(0)
    glass = (np.array([242, 240, 244]) + rng.integers(0, 3, (400, 400, 3))).astype(np.uint8)
    assert check_stain(glass).kind == "blank"
    assert check_stain(np.zeros((50, 50, 3), np.uint8)).action == "refuse"


def test_engine_refuses_before_tissue_detection_and_can_be_overridden(sample_thumb, tiny_model):
    from napari_stpredict.inference import predict_slide, run_prediction

    gray = np.repeat(np.asarray(Image.fromarray(sample_thumb).convert("L"))[..., None], 3, -1)
    slide = ArraySlide(gray, mpp=0.688 * 7400 / gray.shape[1], name="gray_copy.tif")
    gen = predict_slide(slide, tiny_model)
    stages = []
    with pytest.raises(StainCheckError, match="gray_copy.tif.*grayscale.*--no-stain-check"):
        for progress in gen:
            stages.append(progress["stage"])
    assert stages == ["stain"]  # nothing slow ran
    prediction = run_prediction(slide, tiny_model, check_stain=False)
    assert prediction.trust.stain.kind == "grayscale"


@pytest.mark.slow
def test_cli_reports_the_fluorescence_slide_and_completes_the_others(
    wsi_dir, tiny_model_path, tmp_path, monkeypatch, capsys
):
    from napari_stpredict.cli import main

    monkeypatch.setenv("STPREDICT_CACHE_DIR", str(tmp_path / "cache"))
    rc = main(
        [
            "predict",
            str(wsi_dir / "ndpi_test3-DAPI-2-387.ndpi"),
            str(wsi_dir / "CMU-1-Small-Region.svs"),
            "--model",
            str(tiny_model_path),
            "--genes",
            "ERBB2",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 1 and "ndpi_test3-DAPI-2-387.ndpi" in err and "fluorescence" in err
    assert (tmp_path / "out" / "CMU-1-Small-Region" / "prediction.h5ad").exists()
