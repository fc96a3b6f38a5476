"""Issue 21.4: a prediction folder dropped onto napari beside its slide comes back as
layers on the slide, without the model."""

from __future__ import annotations

import numpy as np
from conftest import predict_cli


def test_a_saved_prediction_folder_reopens_on_its_slide(
    make_napari_viewer, sample_slide_path, tiny_model_path, tmp_path, monkeypatch
):
    monkeypatch.setenv("STPREDICT_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "out"
    assert predict_cli(sample_slide_path, tiny_model_path, "--out", str(out), "--genes", "ERBB2", "GRB7") == 0
    folder = out / "her2st_C2"
    from napari_stpredict._results_reader import napari_get_prediction_reader
    from napari_stpredict.inference.prediction import Prediction

    assert napari_get_prediction_reader(str(tmp_path)) is None  # not an output folder
    assert napari_get_prediction_reader(str(folder)) is not None
    assert napari_get_prediction_reader(str(folder / "prediction.h5ad")) is not None
    viewer = make_napari_viewer()
    viewer.open(str(sample_slide_path), plugin="napari-stpredict")
    layers = viewer.open(str(folder), plugin="napari-stpredict")
    names = [layer.name for layer in layers]
    assert "ERBB2 (predicted) [her2st_C2, saved]" in names and "GRB7 (predicted) [her2st_C2, saved]" in names
    assert "tumour (predicted) [her2st_C2, saved]" in names
    prediction = Prediction.load(folder / "prediction.h5ad")
    heat = viewer.layers["ERBB2 (predicted) [her2st_C2, saved]"]
    slide_layer = viewer.layers["her2st_C2"]
    f = heat.metadata["stpredict"]["display_oversample"]
    obs = prediction.adata.obs
    for i in (0, len(obs) - 1):  # a spot's centre: the same world point through both layers
        row, col = int(obs["grid_row"].iloc[i]), int(obs["grid_col"].iloc[i])
        on_map = np.asarray(heat.data_to_world((row * f + f // 2, col * f + f // 2)))[-2:]
        on_slide = np.asarray(slide_layer.data_to_world((obs["y"].iloc[i] - 0.5, obs["x"].iloc[i] - 0.5)))[-2:]
        assert np.allclose(on_map, on_slide, atol=1e-6)
    mask = viewer.layers["tumour mask [her2st_C2, saved]"]
    import rasterio

    with rasterio.open(folder / "tumor_mask.tif") as ds:  # the run's own threshold and markers
        assert np.array_equal(np.asarray(mask.data), ds.read(1))
