"""Issue 21.2: the SpatialData export opened in napari-spatialdata, in a real viewer: the
slide, the spots on their level-0 positions, and a gene coloured over the slide."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import predict_cli


def test_napari_spatialdata_shows_the_predicted_genes_over_the_slide(
    make_napari_viewer, qtbot, sample_slide_path, tiny_model_path, tmp_path, monkeypatch
):
    sd = pytest.importorskip("spatialdata")  # the extra; CI installs it (a skip fails there)
    napari_spatialdata = pytest.importorskip("napari_spatialdata")
    monkeypatch.setenv("STPREDICT_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "out"
    assert predict_cli(sample_slide_path, tiny_model_path, "--out", str(out), "--export", "spatialdata") == 0
    sdata = sd.read_zarr(out / "her2st_C2" / "prediction.zarr")
    table = sdata["table"]

    viewer = make_napari_viewer()
    interactive = napari_spatialdata.Interactive(sdata, headless=True)
    for element in ("slide", "spots", "tumour"):
        interactive.add_element(element, "global")  # loaded by napari-spatialdata's worker thread
        qtbot.waitUntil(lambda element=element: element in viewer.layers, timeout=60_000)

    slide, spots = viewer.layers["slide"], viewer.layers["spots"]
    from napari_stpredict.io.slide import open_slide

    with open_slide(sample_slide_path) as opened:
        width, height = opened.dimensions
    # The downsampled image spans the slide's level-0 pixels: stored pixel j covers level-0
    # [j s, (j + 1) s), so napari draws its centre at (j + 0.5) s, in the same world
    # coordinates as the spots (level-0 positions, origin at the slide's top-left corner).
    shape = np.asarray(slide.data[0].shape[:2] if slide.rgb else slide.data[0].shape[-2:])
    s = np.array([height, width]) / shape
    for j in ((0, 0), tuple(shape - 1)):
        assert np.allclose(np.asarray(slide.data_to_world(j))[-2:], (np.asarray(j) + 0.5) * s, atol=1e-6)
    # every spot drawn at its predicted centre (napari: y, x)
    assert len(spots.data) == len(table)
    world = np.array([spots.data_to_world(p) for p in spots.data])[:, -2:]
    ids = np.asarray(spots.metadata["indices"])
    row_of = {spot: i for i, spot in enumerate(table.obs["spot_id"].to_numpy())}
    centres = table.obsm["spatial"][[row_of[i] for i in ids]]
    assert np.allclose(world, centres[:, ::-1], atol=1e-6)

    # colour the spots by a gene the way a user does (the View widget's gene list)
    viewer.layers.selection.active = spots
    view = viewer.window.dock_widgets["View (napari-spatialdata)"]
    qtbot.waitUntil(lambda: view.model.adata is not None, timeout=10_000)
    view.var_widget._onAction(["ERBB2"])
    colours = np.asarray(spots.face_color)
    values = np.asarray(table[:, "ERBB2"].X).ravel()[[row_of[i] for i in ids]]
    brightness = colours[:, :3].sum(1)
    assert np.unique(colours, axis=0).shape[0] > 10  # a map, not one colour
    # viridis: higher values are brighter
    assert np.corrcoef(brightness, values)[0, 1] > 0.9
    assert view.model.color_by == "ERBB2"
