"""Trust signals with the bundled model on real slides: out-of-domain verdicts, tumour calls
in absolute units, and how they reach the table, the exports and the command line."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from napari_stpredict.inference import Prediction, run_prediction
from napari_stpredict.inference.tumor import tumor_mask
from napari_stpredict.io.slide import open_slide


@pytest.fixture(scope="module")
def model():
    from napari_stpredict.model import load_model

    return load_model(device="cpu")


def _predict(path, model, mpp=None, **kwargs):
    with open_slide(path, mpp=mpp) as slide:
        return run_prediction(slide, model, **kwargs)


@pytest.fixture(scope="module")
def sample_prediction(sample_slide_path, model):
    return _predict(sample_slide_path, model)


@pytest.fixture(scope="module")
def skin_prediction(wsi_dir, model):
    return _predict(wsi_dir / "CMU-1-Small-Region.svs", model, stride_um=56.0)


def test_bundled_model_carries_its_calibration(model):
    cal = model.calibration
    assert cal is not None and cal["domain"]["reference"].shape == (1006, model.network.backbone.num_features)
    assert cal["domain"]["held_out_share"]["B4"] < 0.1  # the other patient, held out, reads in domain
    tumor = cal["tumor"]
    assert tumor["markers"] == model.provenance["markers"]["panel"]
    assert tumor["training_auc"] > 0.7 and np.isfinite(tumor["threshold"])


def test_held_out_sample_is_in_domain(sample_prediction):
    domain = sample_prediction.adata.uns["stpredict"]["trust"]["domain"]
    assert domain["verdict"] == "in domain" and domain["share_out"] < 0.05
    obs = sample_prediction.adata.obs
    assert np.isfinite(obs["domain_distance"]).all()
    assert obs["out_of_domain"].dtype == bool and obs["out_of_domain"].mean() == domain["share_out"]


@pytest.mark.slow
@pytest.mark.parametrize("name, mpp", [("CMU-1-Small-Region.svs", None), ("tcga-cr-7395-01a-01-ts1.svs", 0.5)])
def test_other_tissues_are_out_of_domain(wsi_dir, model, name, mpp):
    prediction = _predict(wsi_dir / name, model, mpp=mpp)
    domain = prediction.adata.uns["stpredict"]["trust"]["domain"]
    assert domain["verdict"] == "out of domain" and domain["share_out"] > 0.5, domain
    assert "OUT OF DOMAIN" in domain["message"]


def test_skin_is_not_called_tumour_by_default(skin_prediction):
    default = tumor_mask(skin_prediction)
    assert default.mode == "absolute" and default.fraction == 0.0 and "out of domain" in default.note
    # what the tumour call would be without the out-of-domain rule: most of the dermis
    assert tumor_mask(skin_prediction, include_out_of_domain=True).fraction > 0.5
    # the per-slide automatic threshold, named as such, still splits any slide in two
    per_slide = tumor_mask(skin_prediction, mode="slide", include_out_of_domain=True)
    assert per_slide.mode == "slide" and 0.1 < per_slide.fraction < 0.9
    assert "per slide" in per_slide.describe()


def test_absolute_tumour_call_agrees_with_the_sample_labels(sample_prediction, sample_spots_path):
    """At the calibrated threshold, the held-out sample's cancer spots (the authors'
    expression clusters) are mostly called tumour and the others mostly not."""
    import anndata as ad

    from napari_stpredict.training.data import tumor_labels

    spots = ad.read_h5ad(sample_spots_path)
    labels = tumor_labels(spots.obs)
    mask = tumor_mask(sample_prediction)
    assert (
        mask.mode == "absolute"
        and mask.automatic
        and mask.threshold == pytest.approx(sample_prediction.adata.uns["stpredict"]["tumor_calibration"]["threshold"])
    )
    heat = sample_prediction.raster(
        mask.raster.astype(np.float32)[
            sample_prediction.adata.obs["grid_row"], sample_prediction.adata.obs["grid_col"]
        ],
        "called",
    )
    called = heat.sample(np.asarray(spots.obsm["spatial"], float)) > 0.5
    known = labels >= 0
    cancer = labels[known] == 1
    sensitivity = (called[known] & cancer).sum() / cancer.sum()
    specificity = (~called[known] & ~cancer).sum() / (~cancer).sum()
    assert sensitivity > 0.5 and specificity > 0.5, (sensitivity, specificity)


def test_absolute_scores_do_not_depend_on_the_rest_of_the_slide(sample_prediction):
    """In training units a spot's score is its own; per slide it moves with its neighbours."""
    half = sample_prediction.adata[: len(sample_prediction) // 2].copy()
    part = Prediction(half)
    full_abs = tumor_mask(sample_prediction).score[: len(part)]
    assert np.allclose(tumor_mask(part).score, full_abs, atol=1e-5)
    assert not np.allclose(
        tumor_mask(part, mode="slide").score, tumor_mask(sample_prediction, mode="slide").score[: len(part)], atol=1e-3
    )


def test_custom_markers_fall_back_to_a_named_per_slide_threshold(sample_prediction):
    mask = tumor_mask(sample_prediction, ["ERBB2", "GRB7"])
    assert mask.mode == "slide" and "marker panel only" in mask.note
    given = tumor_mask(sample_prediction, ["ERBB2", "GRB7"], threshold=0.5, mode="absolute")
    assert given.mode == "absolute" and not given.automatic
    with pytest.raises(ValueError, match="finite"):
        tumor_mask(sample_prediction, threshold=float("nan"))


def test_trust_survives_saving_and_loading(sample_prediction, tmp_path):
    loaded = Prediction.load(sample_prediction.save(tmp_path / "p.h5ad"))
    assert loaded.adata.uns["stpredict"]["trust"] == sample_prediction.adata.uns["stpredict"]["trust"]
    assert loaded.adata.obs["out_of_domain"].dtype == bool
    assert np.array_equal(tumor_mask(loaded).raster, tumor_mask(sample_prediction).raster)


def test_uncalibrated_model_says_so(sample_slide_path, tiny_model):
    prediction = _predict(sample_slide_path, tiny_model)
    assert prediction.trust.domain.verdict == "unknown"
    assert "no out-of-domain calibration" in prediction.adata.uns["stpredict"]["trust"]["domain"]["message"]
    mask = tumor_mask(prediction)
    assert mask.mode == "slide" and "no tumour calibration" in mask.note
    with pytest.raises(ValueError, match="calibration"):
        tumor_mask(prediction, mode="absolute")


@pytest.mark.slow
def test_cli_prints_the_verdict_and_records_it(wsi_dir, sample_slide_path, tmp_path, monkeypatch, capsys):
    from napari_stpredict.cli import main

    monkeypatch.setenv("STPREDICT_CACHE_DIR", str(tmp_path / "cache"))
    rc = main(["predict", str(wsi_dir / "CMU-1-Small-Region.svs"), "--out", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert rc == 0
    assert "(predicted), out of domain, tumour 0% of tissue" in captured.out
    assert "OUT OF DOMAIN" in captured.err and "no spot is called tumour" in captured.err
    config = yaml.safe_load((tmp_path / "out" / "CMU-1-Small-Region" / "config.yaml").read_text())
    assert config["domain"]["verdict"] == "out of domain" and config["threshold_mode"] == "absolute"
    assert config["stain"] == "he" and config["tumour_fraction"] == 0.0
    import rasterio

    with rasterio.open(tmp_path / "out" / "CMU-1-Small-Region" / "ERBB2.tif") as ds:
        assert ds.tags()["DOMAIN_VERDICT"] == "out of domain"
    rc = main(
        [
            "predict",
            str(wsi_dir / "CMU-1-Small-Region.svs"),
            "--out",
            str(tmp_path / "out2"),
            "--threshold-mode",
            "slide",
            "--tumour-out-of-domain",
        ]
    )
    assert rc == 0 and "automatic per slide" in capsys.readouterr().out


def test_colour_limits_are_the_training_range_by_default(sample_prediction, skin_prediction):
    """Fixed per gene from the training spots, so colours mean the same on two slides;
    the per-slide percentiles stay available."""
    from napari_stpredict.layers import colour_limits, heatmap_layer

    fixed = colour_limits(sample_prediction, "ERBB2")
    assert fixed == colour_limits(skin_prediction, "ERBB2") and fixed[0] < fixed[1]
    assert colour_limits(sample_prediction, "ERBB2", fixed=False) != colour_limits(
        skin_prediction, "ERBB2", fixed=False
    )
    assert heatmap_layer(sample_prediction, "ERBB2")[1]["contrast_limits"] == fixed


def test_overview_has_colour_bar_scale_bar_and_legend(sample_prediction, sample_slide_path, tmp_path):
    from PIL import Image

    from napari_stpredict.inference.export import export_overview

    with open_slide(sample_slide_path) as slide:
        path = export_overview(slide, sample_prediction, "ERBB2", tumor_mask(sample_prediction), tmp_path / "o.png")
        thumb_h = slide.thumbnail(1024).shape[0]
    image = np.asarray(Image.open(path))
    strip = image[thumb_h:]
    assert strip.shape[0] > 60  # the caption strip below the slide
    bar = strip[6:16, 8:200]
    assert (bar[:, :, 1].astype(int) - bar[:, :, 0]).max() > 100  # viridis: a green-above-red gradient
    assert (strip[8:12, -100:-10] < 50).all()  # the black scale bar at the right


def test_smooth_sampling_interpolates_between_spot_centres(sample_prediction):
    heat = sample_prediction.heatmap("ERBB2")
    obs = sample_prediction.adata.obs
    centre = sample_prediction.l0_centres[:1]
    assert heat.sample_smooth(centre)[0] == pytest.approx(heat.sample(centre)[0], abs=1e-5)  # exact at a centre
    rows, cols = obs["grid_row"].to_numpy(), obs["grid_col"].to_numpy()
    both = [i for i in range(len(obs)) if ((rows == rows[i]) & (cols == cols[i] + 1)).any()]
    i = both[0]
    j = int(np.flatnonzero((rows == rows[i]) & (cols == cols[i] + 1))[0])
    midpoint = (sample_prediction.l0_centres[i] + sample_prediction.l0_centres[j]) / 2
    values = sample_prediction.expression("ERBB2")
    assert heat.sample_smooth(midpoint[None])[0] == pytest.approx((values[i] + values[j]) / 2, abs=1e-4)
