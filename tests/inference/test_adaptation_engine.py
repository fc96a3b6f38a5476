"""Per-slide adaptation in the whole-slide engine (issue 19): recorded, estimated on the
whole tissue whatever the region, and never changing the out-of-domain score."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import WSI, _require


@pytest.fixture(scope="module")
def bundled():
    from napari_stpredict.model import load_model

    return load_model(device="cpu")


def _predict(path, model, mpp=None, **kwargs):
    from napari_stpredict.inference import run_prediction
    from napari_stpredict.io.slide import open_slide

    with open_slide(path, mpp=mpp) as slide:
        return run_prediction(slide, model, context_sigma_um=0.0, **kwargs)


@pytest.mark.slow
def test_adaptation_changes_the_map_not_the_domain_score_and_is_recorded(sample_slide_path, bundled):
    plain = _predict(sample_slide_path, bundled, adaptation="none")
    adapted = _predict(sample_slide_path, bundled, adaptation="standardise")
    assert plain.adata.uns["stpredict"]["model"]["adaptation"] == {"mode": "none"}
    summary = adapted.adata.uns["stpredict"]["model"]["adaptation"]
    assert summary["mode"] == "standardise" and summary["n_patches"] >= 32 and summary["shift_size"] > 0
    np.testing.assert_allclose(adapted.adata.obs["domain_distance"], plain.adata.obs["domain_distance"], atol=1e-5)
    assert (adapted.adata.obs["out_of_domain"] == plain.adata.obs["out_of_domain"]).all()
    assert not np.allclose(adapted.expression("ERBB2"), plain.expression("ERBB2"))


@pytest.mark.slow
def test_a_region_is_adapted_with_the_whole_slides_statistics(sample_slide_path, bundled):
    """A region (often all tumour) is adapted with the whole tissue's statistics, not its own."""
    from napari_stpredict.io.patches import read_patches
    from napari_stpredict.io.slide import open_slide

    whole = _predict(sample_slide_path, bundled, adaptation="standardise")
    xy = whole.adata.obsm["spatial"]
    box = [float(xy[:, 0].min()), float(xy[:, 1].min()), float(np.median(xy[:, 0])), float(np.median(xy[:, 1]))]
    region = _predict(sample_slide_path, bundled, adaptation="standardise", roi=box)
    assert 0 < len(region) < len(whole)
    assert region.adata.uns["stpredict"]["model"]["adaptation"] == whole.adata.uns["stpredict"]["model"]["adaptation"]
    with open_slide(sample_slide_path) as slide:
        patches = read_patches(slide, region.adata.obsm["spatial"], bundled.io.patch_um, bundled.io.input_px)
    own = bundled.slide_adaptation(bundled.features_many(patches), mode="standardise")
    assert round(own.shift_size, 4) != whole.adata.uns["stpredict"]["model"]["adaptation"]["shift_size"]


@pytest.mark.slow
def test_an_out_of_domain_slide_stays_out_of_domain_when_adapted(bundled):
    slide = _require(WSI / "tcga-cr-7395-01a-01-ts1.svs")  # head-and-neck tissue, another scanner
    plain = _predict(slide, bundled, adaptation="none", mpp=0.5, check_stain=False)
    adapted = _predict(slide, bundled, adaptation="standardise", mpp=0.5, check_stain=False)
    assert adapted.trust.domain.verdict == plain.trust.domain.verdict
    np.testing.assert_allclose(adapted.adata.obs["domain_distance"], plain.adata.obs["domain_distance"], atol=1e-5)


def test_a_bad_adaptation_fails_before_any_slow_work(sample_slide_path, bundled):
    from napari_stpredict.inference import predict_slide
    from napari_stpredict.io.slide import open_slide

    with open_slide(sample_slide_path) as slide, pytest.raises(ValueError, match="adaptation must be one of"):
        next(predict_slide(slide, bundled, adaptation="adabn"))


@pytest.mark.slow
def test_the_cli_switch_reaches_the_engine_and_the_cache_key(sample_slide_path, tmp_path, monkeypatch):
    import anndata as ad
    from conftest import predict_cli

    from napari_stpredict.model import default_model_path

    monkeypatch.setenv("STPREDICT_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "out"
    assert predict_cli(sample_slide_path, default_model_path(), "--out", str(out), "--adaptation", "centre") == 0
    meta = ad.read_h5ad(out / "her2st_C2" / "prediction.h5ad").uns["stpredict"]
    assert meta["model"]["adaptation"]["mode"] == "centre"
    assert predict_cli(sample_slide_path, default_model_path(), "--out", str(out), "--adaptation", "none") == 0
    meta = ad.read_h5ad(out / "her2st_C2" / "prediction.h5ad").uns["stpredict"]
    assert meta["model"]["adaptation"]["mode"] == "none"  # not the cached adapted result


@pytest.mark.slow
@pytest.mark.parametrize(("mpp", "withheld"), [(2.0, False), (3.2, True)])
def test_the_tumour_call_is_withheld_on_slides_too_coarse_for_it(sample_slide_path, bundled, mpp, withheld):
    from PIL import Image

    from napari_stpredict.inference import run_prediction
    from napari_stpredict.inference.tumor import tumor_mask
    from napari_stpredict.io.base import ArraySlide
    from napari_stpredict.io.slide import open_slide

    with open_slide(sample_slide_path) as slide:
        image = slide.read_region((0, 0), 0, slide.dimensions)
        native = slide.mpp_x
    factor = native / mpp
    small = np.asarray(Image.fromarray(image).resize((round(image.shape[1] * factor), round(image.shape[0] * factor))))
    prediction = run_prediction(ArraySlide(small, mpp=mpp, levels=3, name="coarse"), bundled)
    mask = tumor_mask(prediction)
    if withheld:
        assert mask.fraction == 0 and "coarser than the 2.5 µm/px the tumour call holds at" in mask.note
        assert tumor_mask(prediction, include_out_of_domain=True).fraction > 0  # the switch calls anyway
    else:
        assert mask.fraction > 0 and "coarser" not in mask.note
