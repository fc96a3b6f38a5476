"""The prediction engine on the real sample slide: grid, placement, exports, cancel, cache."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from napari_stpredict.inference import Prediction, PredictionCancelled, predict_slide, run_prediction
from napari_stpredict.inference.cache import cached_predict_slide
from napari_stpredict.inference.export import export_gene_geotiff, export_tumor
from napari_stpredict.inference.tumor import tumor_mask
from napari_stpredict.io.slide import open_slide
from napari_stpredict.tiling import spot_grid
from napari_stpredict.tissue import slide_tissue_mask


@pytest.fixture(scope="module")
def sample(sample_slide_path):
    with open_slide(sample_slide_path) as slide:
        yield slide


@pytest.fixture(scope="module")
def prediction(sample, tiny_model):
    return run_prediction(sample, tiny_model, batch_size=32)


@pytest.mark.slow
@pytest.mark.parametrize("stride_um", [112.0, 56.0])
def test_grid_patches_are_half_tissue_and_cover_the_tissue(sample, stride_um):
    tissue = slide_tissue_mask(sample, max_size=2048)
    grid = spot_grid(tissue.mask, tissue.l0_per_th, sample.mpp, patch_um=112.0, stride_um=stride_um)
    assert (grid.tissue_fraction >= 0.5).all()
    # every patch is at least half tissue, recomputed independently on the mask
    for cx, cy in grid.l0_centres[::7]:
        half = 56.0 / sample.mpp_x
        c0, c1 = int((cx - half) / tissue.l0_per_th[0]), int((cx + half) / tissue.l0_per_th[0])
        r0, r1 = int((cy - half) / tissue.l0_per_th[1]), int((cy + half) / tissue.l0_per_th[1])
        assert tissue.mask[r0:r1, c0:c1].mean() >= 0.45
    # every tissue pixel is within one stride (along x and y) of a spot centre
    rr, cc = np.nonzero(tissue.mask)
    px = np.column_stack([(cc + 0.5) * tissue.l0_per_th[0], (rr + 0.5) * tissue.l0_per_th[1]])
    from scipy.spatial import cKDTree

    dist, _ = cKDTree(grid.l0_centres).query(px, p=np.inf)
    assert (dist <= grid.stride[0] + 1e-6).mean() >= 0.999, (dist > grid.stride[0]).sum()


def test_prediction_table(prediction, tiny_model, sample):
    assert len(prediction) > 300 and prediction.genes == tiny_model.genes
    assert prediction.meta.patch_um == 112.0 and prediction.adata.uns["stpredict"]["mpp_x"] == pytest.approx(0.688)
    assert np.isfinite(prediction.adata.X).all() and np.isfinite(prediction.confidence).all()
    assert str(sample.path.parent) not in json.dumps(prediction.adata.uns["stpredict"], default=str)
    h = prediction.heatmap("erbb2")
    assert h.name == "ERBB2" and h.raster.dtype == np.float32
    assert np.isnan(h.raster).any() and (~np.isnan(h.raster)).sum() == len(prediction)
    with pytest.raises(KeyError, match="NOTAGENE"):
        prediction.heatmap("NOTAGENE")


def test_save_and_load(prediction, tmp_path):
    path = prediction.save(tmp_path / "p.h5ad")
    back = Prediction.load(path)
    assert np.allclose(back.expression("ERBB2"), prediction.expression("ERBB2"))
    assert back.adata.uns["stpredict"]["grid_shape"] == list(prediction.adata.uns["stpredict"]["grid_shape"])
    json.dumps(back.adata.uns["stpredict"])  # plain Python values, as in a fresh prediction, not numpy arrays
    assert back.heatmap("ERBB2").raster.shape == prediction.heatmap("ERBB2").raster.shape


def test_heatmap_pixel_maps_back_to_its_spot_through_the_geotiff(prediction, tmp_path):
    import rasterio

    path = export_gene_geotiff(prediction, "ERBB2", tmp_path / "ERBB2.tif")
    obs = prediction.adata.obs
    with rasterio.open(path) as ds:
        assert ds.dtypes == ("float32",) and np.isnan(ds.nodata)
        assert ds.profile["tiled"] and ds.profile["compress"] == "deflate" and ds.overviews(1)
        assert ds.tags()["UNITS"] == "log1p(counts per 10,000)" and ds.tags()["GENE"] == "ERBB2"
        band = ds.read(1)
        for i in range(0, len(obs), 37):
            row, col = int(obs["grid_row"].iloc[i]), int(obs["grid_col"].iloc[i])
            x, y = ds.xy(row, col)
            # xy() is the pixel centre: it lands on the spot centre (well within half a pixel)
            assert abs(x - obs["x"].iloc[i]) <= 1e-6 and abs(y - obs["y"].iloc[i]) <= 1e-6
            assert band[row, col] == pytest.approx(prediction.expression("ERBB2")[i])
    raw = path.read_bytes()
    assert str(prediction.meta.slide.name).encode() in raw
    assert b"/work/" not in raw and b"sample_data" not in raw  # no folder paths


def test_napari_placement_matches_level0(prediction):
    h = prediction.heatmap("ERBB2")
    obs = prediction.adata.obs
    i = len(obs) // 2
    row, col = obs["grid_row"].iloc[i], obs["grid_col"].iloc[i]
    world = np.array(h.translate) + np.array(h.scale) * (row, col)
    mpp = prediction.meta.mpp_x
    assert world == pytest.approx(((obs["y"].iloc[i] - 0.5) * mpp, (obs["x"].iloc[i] - 0.5) * mpp))


def test_tumour_mask_geotiff_and_geojson(prediction, tmp_path):
    import rasterio
    from skimage.draw import polygon as draw_polygon

    mask = tumor_mask(prediction, ["ERBB2", "GRB7", "NOTAGENE"])
    assert mask.missing == ["NOTAGENE"] and mask.automatic
    assert 0 < mask.raster.sum() < mask.tissue.sum()
    export_tumor(prediction, mask, tmp_path / "t.tif", tmp_path / "t.geojson")
    with rasterio.open(tmp_path / "t.tif") as ds:
        assert ds.dtypes == ("uint8",) and np.array_equal(ds.read(1), mask.raster)
    gj = json.loads((tmp_path / "t.geojson").read_text())
    assert gj["type"] == "FeatureCollection" and gj["features"]
    origin, stride = (
        prediction.grid.origin,
        prediction.grid.stride,
    )
    covered = np.zeros(mask.raster.shape, bool)
    for f in gj["features"]:
        assert f["geometry"]["type"] == "Polygon" and f["properties"]["objectType"] == "annotation"
        for k, ring in enumerate(f["geometry"]["coordinates"]):
            ring = np.asarray(ring)
            assert len(ring) >= 4 and np.allclose(ring[0], ring[-1])
            cols = (ring[:, 0] - origin[0]) / stride[0]
            rows = (ring[:, 1] - origin[1]) / stride[1]
            rr, cc = draw_polygon(rows, cols, shape=covered.shape)
            region = np.zeros_like(covered)
            region[rr, cc] = True
            covered = covered | region if k == 0 else covered & ~region
    assert np.array_equal(covered, mask.raster > 0)


def test_threshold_changes_the_mask(prediction):
    low = tumor_mask(prediction, ["ERBB2"], threshold=-1.0)
    high = tumor_mask(prediction, ["ERBB2"], threshold=1.0)
    assert low.raster.sum() > high.raster.sum() and not low.automatic


def test_region_of_interest(sample, tiny_model):
    w, h = sample.dimensions
    box = (w * 0.4, h * 0.4, w * 0.7, h * 0.7)
    p = run_prediction(sample, tiny_model, roi=box)
    xy = p.l0_centres
    assert len(p) > 10
    assert (xy[:, 0] >= box[0]).all() and (xy[:, 0] <= box[2]).all()
    assert (xy[:, 1] >= box[1]).all() and (xy[:, 1] <= box[3]).all()


def test_cancel_mid_run_writes_nothing(sample, tiny_model, tmp_path):
    cancel = threading.Event()
    gen = cached_predict_slide(sample, tiny_model, model_path=None, batch_size=16, cancel_event=cancel)
    seen = 0
    with pytest.raises(PredictionCancelled, match="cancelled"):
        for progress in gen:
            if progress["stage"] == "predict":
                seen += 1
                cancel.set()
    assert seen == 1
    # closing the generator (what napari's worker.quit does) also stops it cleanly
    gen = predict_slide(sample, tiny_model, batch_size=16)
    next(gen), next(gen)
    gen.close()
    assert not list(tmp_path.iterdir())


def test_cache_hit_on_rerun(sample, tiny_model, tiny_model_path, tmp_path):
    def run():
        stages = []
        gen = cached_predict_slide(sample, tiny_model, model_path=tiny_model_path, directory=tmp_path, stride_um=112.0)
        while True:
            try:
                stages.append(next(gen)["stage"])
            except StopIteration as stop:
                return stop.value, stages

    first, stages1 = run()
    second, stages2 = run()
    assert "predict" in stages1 and stages2 == ["cache"]
    assert first.meta.cache == "miss" and second.meta.cache == "hit"
    assert np.allclose(first.adata.X, second.adata.X)
    # A cached prediction carries the same plain metadata as a fresh one (h5ad turns lists into
    # arrays), so the model's marker panel and the tumour mask come out the same.
    meta1, meta2 = ({k: v for k, v in p.adata.uns["stpredict"].items() if k != "cache"} for p in (first, second))
    assert json.dumps(meta2, sort_keys=True) == json.dumps(meta1, sort_keys=True)
    assert second.adata.uns["stpredict"]["model"]["markers"] == ["ERBB2", "GRB7", "EPCAM"]
    mask1, mask2 = tumor_mask(first, None), tumor_mask(second, None)
    assert mask2.markers == mask1.markers == ["ERBB2", "GRB7", "EPCAM"]
    assert np.array_equal(mask2.raster, mask1.raster)
    gen = cached_predict_slide(sample, tiny_model, model_path=tiny_model_path, directory=tmp_path, stride_um=56.0)
    assert next(gen)["stage"] != "cache"  # other parameters, other key
    gen.close()


def test_run_control_never_changes_the_cache_key(sample, tiny_model, tiny_model_path, tmp_path):
    """The widget passes a fresh cancel event (and may change batch size) on every run: a
    rerun with the same result-shaping settings must still hit the cache."""

    def stages(**control):
        gen = cached_predict_slide(
            sample, tiny_model, model_path=tiny_model_path, directory=tmp_path, stride_um=112.0, **control
        )
        out = [p["stage"] for p in gen]
        return out

    assert "predict" in stages(cancel_event=threading.Event(), batch_size=32)
    assert stages(cancel_event=threading.Event(), batch_size=64, num_workers=1) == ["cache"]
    assert len(list(tmp_path.glob("*.h5ad"))) == 1


def test_slide_without_mpp_is_a_clear_error(wsi_dir, tiny_model):
    from napari_stpredict.errors import SlideFormatError

    with open_slide(wsi_dir / "tcga-cr-7395-01a-01-ts1.svs") as slide:
        with pytest.raises(SlideFormatError, match="tcga.*mpp"):
            run_prediction(slide, tiny_model)


def test_empty_tissue_is_a_clear_error(tiny_model):
    from napari_stpredict.errors import TissueMaskError
    from napari_stpredict.io.slide import ArraySlide

    glass = ArraySlide(np.full((2000, 2000, 3), 240, np.uint8), mpp=0.5, name="glass.tiff")
    with pytest.raises(TissueMaskError, match="glass.tiff"):
        run_prediction(glass, tiny_model)


def test_cancel_during_tissue_detection_answers_within_a_second(wsi_dir, tiny_model, monkeypatch):
    """Tissue detection is one call that can take seconds (a 4,096 px thumbnail of a large
    slide on a slow disk); a cancel must not wait for it."""
    import time

    import napari_stpredict.tissue as tissue_module

    # The real detection, made to take 3 s: on the slides here it now takes under 0.3 s.
    real = tissue_module.slide_tissue_mask
    monkeypatch.setattr(tissue_module, "slide_tissue_mask", lambda *a, **k: time.sleep(3) or real(*a, **k))
    cancel = threading.Event()
    with open_slide(wsi_dir / "CMU-1-Small-Region.svs") as slide:
        gen = predict_slide(slide, tiny_model, cancel_event=cancel)
        stages = []
        while not stages or stages[-1] != "tissue":
            stages.append(next(gen)["stage"])
        threading.Timer(0.3, cancel.set).start()
        t0 = time.perf_counter()
        with pytest.raises(PredictionCancelled, match="CMU-1-Small-Region.svs.*cancelled"):
            next(gen)
        waited = time.perf_counter() - t0
    assert waited < 0.3 + 1.0, waited


@pytest.mark.slow
def test_a_rerun_on_the_same_open_slide_reuses_its_tissue_mask(sample_slide_path, tiny_model, monkeypatch):
    """Another stride or region on a slide already predicted: tissue detection (seconds on
    a large slide) is not repeated, and the result is the same as from a fresh slide."""
    import napari_stpredict.tissue as tissue_module

    calls = []
    original = tissue_module.slide_tissue_mask
    monkeypatch.setattr(tissue_module, "slide_tissue_mask", lambda *a, **k: calls.append(1) or original(*a, **k))
    with open_slide(sample_slide_path) as slide:
        first = run_prediction(slide, tiny_model, batch_size=64)
        finer = run_prediction(slide, tiny_model, batch_size=64, stride_um=56.0)
        w, h = slide.dimensions
        boxed = run_prediction(slide, tiny_model, roi=(w * 0.4, h * 0.4, w * 0.7, h * 0.7))
    assert len(calls) == 1
    assert first.trust.stain == finer.trust.stain == boxed.trust.stain
    with open_slide(sample_slide_path) as fresh:  # a new slide object detects again, same grid
        again = run_prediction(fresh, tiny_model, batch_size=64, stride_um=56.0)
    assert len(calls) == 2
    np.testing.assert_array_equal(again.l0_centres, finer.l0_centres)
