"""The prediction dock widget in a real napari viewer under Xvfb."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

pytestmark = pytest.mark.viewer


def _open_widget(viewer, path):
    viewer.open(str(path), plugin="napari-stpredict")
    _, widget = viewer.window.add_plugin_dock_widget("napari-stpredict", "Predict gene expression")
    return widget


def _run(qtbot, widget, timeout=180_000):
    widget.run()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=timeout)


def _cell(layer, row, col):
    """Data coordinates of spot-grid cell ``(row, col)``'s centre in ``layer`` (heatmaps draw
    each spot as sub-cells, `layers.DISPLAY_OVERSAMPLE`)."""
    f = layer.metadata["stpredict"].get("display_oversample", 1)
    return (row * f + f // 2, col * f + f // 2)


def _spot_values(layer):
    from napari_stpredict.layers import spot_values_of_display

    return spot_values_of_display(layer.data, layer.metadata["stpredict"].get("display_oversample", 1))


def _kinds(viewer):
    return {
        layer.metadata.get("stpredict", {}).get("kind"): layer
        for layer in viewer.layers
        if layer.metadata.get("stpredict")
    }


@pytest.fixture
def predicted(make_napari_viewer, qtbot, sample_slide_path, tiny_model_path, tmp_path, monkeypatch):
    monkeypatch.setenv("STPREDICT_CACHE_DIR", str(tmp_path / "cache"))
    viewer = make_napari_viewer(show=True)
    widget = _open_widget(viewer, sample_slide_path)
    widget.set_model_path(tiny_model_path)
    widget.device_combo.setCurrentText("cpu")
    _run(qtbot, widget)
    assert widget.prediction is not None, widget.status.text()
    return viewer, widget


def test_prediction_adds_layers_aligned_with_the_slide(predicted):
    viewer, widget = predicted
    kinds = _kinds(viewer)
    assert {"heatmap", "tumor_mask", "tumor_contour", "confidence", "measured"} <= set(kinds)
    heat, slide_layer = kinds["heatmap"], viewer.layers["her2st_C2"]
    assert heat.name == "ERBB2 (predicted) [her2st_C2]" and heat.colormap.name == "viridis" and heat.colorbar.visible
    from napari_stpredict._qt.predict_widget import canvas_caption

    assert "log1p" in canvas_caption(viewer).text
    obs = widget.prediction.adata.obs
    for i in (0, len(obs) // 2, len(obs) - 1):  # a known spot: same world point in both layers
        x, y = obs["x"].iloc[i], obs["y"].iloc[i]
        slide_world = slide_layer.data_to_world((y - 0.5, x - 0.5))
        heat_world = heat.data_to_world(_cell(heat, obs["grid_row"].iloc[i], obs["grid_col"].iloc[i]))
        assert np.allclose(slide_world, heat_world, atol=1e-6)
    mask_world = kinds["tumor_mask"].data_to_world((obs["grid_row"].iloc[0], obs["grid_col"].iloc[0]))
    assert np.allclose(mask_world, heat.data_to_world(_cell(heat, obs["grid_row"].iloc[0], obs["grid_col"].iloc[0])))
    assert any("Research use only" in label.text() for label in widget.findChildren(type(widget.status)))
    regions = [widget.region_combo.itemText(i) for i in range(widget.region_combo.count())]
    assert not any("tumour" in name for name in regions), regions  # its own contour is no region to predict in
    assert "trained on" in widget.model_info.text()
    assert np.isfinite(widget.last_r)  # measured spots of the sample were loaded for comparison


def test_screenshot_shows_heatmap_colours(predicted):
    viewer, widget = predicted
    viewer.reset_view()
    heat = _kinds(viewer)["heatmap"]
    for layer in list(viewer.layers):
        layer.visible = layer.name in ("her2st_C2", heat.name)
    heat.opacity = 1.0
    with_heat = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(int)
    heat.visible = False
    slide_only = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(int)

    def viridis_like(img):  # green above red: viridis, never H&E (where green is the lowest channel)
        covered = img.sum(-1) > 30  # the slide's area on the canvas (the rest is black)
        rows, cols = np.where(covered.any(1))[0], np.where(covered.any(0))[0]
        box = img[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
        return ((box[..., 1] > box[..., 0] + 30) & (box[..., 1] > 60)).mean()

    assert viridis_like(with_heat) > 0.05 and viridis_like(slide_only) < 0.005


def test_switching_genes_does_not_rerun_the_model(predicted):
    from napari_stpredict._qt.predict_widget import canvas_caption

    viewer, widget = predicted
    calls = []
    original = widget.model.embed_with_features  # what the engine calls for every batch
    widget.model.embed_with_features = lambda *a, **k: calls.append(1) or original(*a, **k)
    from qtpy.QtCore import Qt

    widget.gene_search.setText("grb")
    visible = [
        widget.gene_list.item(i).data(Qt.UserRole)
        for i in range(widget.gene_list.count())
        if not widget.gene_list.item(i).isHidden()
    ]
    assert visible == ["GRB7"]
    heatmaps_before = [
        layer.name for layer in viewer.layers if layer.metadata.get("stpredict", {}).get("kind") == "heatmap"
    ]
    widget.gene_list.findItems("GRB7", Qt.MatchStartsWith)[0].setSelected(True)
    widget.show_selected_genes()
    assert "GRB7 (predicted) [her2st_C2]" in viewer.layers and calls == []
    # browsing one gene at a time swaps the map in its layer: no pile of layers, no slow add
    heatmaps = [layer.name for layer in viewer.layers if layer.metadata.get("stpredict", {}).get("kind") == "heatmap"]
    assert len(heatmaps) == len(heatmaps_before) and "ERBB2 (predicted) [her2st_C2]" not in viewer.layers
    grb7 = viewer.layers["GRB7 (predicted) [her2st_C2]"]
    assert np.allclose(_spot_values(grb7), widget.prediction.heatmap("GRB7").raster, equal_nan=True)
    measured = viewer.layers["GRB7 (measured) [her2st_C2]"]  # recoloured in place for the new gene
    assert "ERBB2 (measured) [her2st_C2]" not in viewer.layers
    from napari_stpredict.io.st_data import match_genes
    from napari_stpredict.training.data import log1p_cp10k

    idx, _, _ = match_genes(widget.spots.var, ["GRB7"])
    assert np.allclose(measured.features["expression"], log1p_cp10k(widget.spots, idx).ravel())
    # genes selected together each get a layer of their own, kept when browsing on
    widget.gene_search.setText("")
    widget.gene_list.findItems("ERBB2", Qt.MatchStartsWith)[0].setSelected(True)
    widget.show_selected_genes()
    grb7, erbb2 = viewer.layers["GRB7 (predicted) [her2st_C2]"], viewer.layers["ERBB2 (predicted) [her2st_C2]"]
    assert grb7.colorbar.visible != erbb2.colorbar.visible
    viewer.layers.selection.active = grb7
    assert grb7.colorbar.visible and not erbb2.colorbar.visible
    viewer.layers.selection.active = erbb2  # the colour bar and caption follow the selected map
    assert erbb2.colorbar.visible and not grb7.colorbar.visible and "ERBB2" in canvas_caption(viewer).text


def test_the_map_keeps_every_predicted_cell_whole_and_the_contour_on_it(predicted):
    """No half spot lost at the tissue edge: every sub-cell of every predicted spot's cell
    is drawn (finite), nothing outside the predicted cells is, and each vertex of the
    tumour contour touches a drawn cell."""
    viewer, widget = predicted
    kinds = _kinds(viewer)
    heat = kinds["heatmap"]
    f = heat.metadata["stpredict"]["display_oversample"]
    assert f > 1 and heat.interpolation2d == "nearest"
    data = np.asarray(heat.data)
    spot_grid = widget.prediction.heatmap("ERBB2").raster
    rows, cols = spot_grid.shape
    blocks = np.isfinite(data).reshape(rows, f, cols, f)
    assert np.array_equal(blocks.all(axis=(1, 3)), np.isfinite(spot_grid))  # every predicted cell whole
    assert np.array_equal(blocks.any(axis=(1, 3)), np.isfinite(spot_grid))  # and nothing beside it
    contour = kinds["tumor_contour"]
    assert len(contour.data), "the sample has a tumour contour"
    for polygon in contour.data:
        world = contour.data_to_world(np.asarray(polygon))
        on_map = np.asarray([heat.world_to_data(w) for w in world])
        # a vertex lies on cell corners: one of the four sub-cells around it is drawn
        near = [
            np.isfinite(
                data[
                    int(np.clip(np.floor(r + dr), 0, data.shape[0] - 1)),
                    int(np.clip(np.floor(c + dc), 0, data.shape[1] - 1)),
                ]
            )
            for r, c in on_map
            for dr in (-0.5, 0.5)
            for dc in (-0.5, 0.5)
        ]
        assert np.asarray(near).reshape(len(on_map), 4).any(axis=1).all()


def test_threshold_slider_changes_the_mask(predicted):
    viewer, widget = predicted
    labels = _kinds(viewer)["tumor_mask"]
    auto = int(labels.data.sum())
    widget.set_threshold(float(widget.tumor.score.max()) - 1e-3)
    high = int(labels.data.sum())
    widget.set_threshold(float(widget.tumor.score.min()))
    low = int(labels.data.sum())
    assert low > auto > high
    assert "manual" in widget.threshold_label.text()
    widget.reset_threshold()
    assert int(labels.data.sum()) == auto and "auto" in widget.threshold_label.text()


def test_exports_read_back(predicted, tmp_path):
    import anndata as ad
    import pandas as pd
    import rasterio

    viewer, widget = predicted
    widget.save_table(tmp_path / "spots.h5ad")
    assert ad.read_h5ad(tmp_path / "spots.h5ad").n_obs == len(widget.prediction)
    widget.save_table(tmp_path / "spots.csv")
    table = pd.read_csv(tmp_path / "spots.csv")
    assert {"x", "y", "confidence", "domain_distance", "out_of_domain", "ERBB2"} <= set(table.columns)
    assert len(table) == len(widget.prediction)
    widget.save_geojson(tmp_path / "tumour.geojson")
    assert json.loads((tmp_path / "tumour.geojson").read_text())["features"]
    widget.save_qupath(tmp_path / "spots.geojson")  # the Export panel's "QuPath spots..."
    spots = json.loads((tmp_path / "spots.geojson").read_text())["features"]
    assert len(spots) == len(widget.prediction) and "ERBB2" in spots[0]["properties"]["measurements"]
    called = [f["properties"].get("classification", {}).get("name") == "Tumor" for f in spots]
    assert called == list(widget.prediction.adata.obs["tumour"].to_numpy(bool))
    import spatialdata as sd  # the extra, installed in CI

    widget.save_spatialdata(tmp_path / "prediction.zarr")  # the Export panel's "SpatialData..."
    sdata = sd.read_zarr(tmp_path / "prediction.zarr")
    assert len(sdata["table"]) == len(widget.prediction) and "tumour" in sdata.shapes
    assert list(sdata["table"].obs["tumour"].to_numpy(bool)) == called  # the mask as shown
    kinds = _kinds(viewer)
    viewer.layers.selection = {kinds["heatmap"]}
    viewer.layers.save(str(tmp_path / "erbb2.tif"), selected=True, plugin="napari-stpredict")
    with rasterio.open(tmp_path / "erbb2.tif") as ds:
        band = ds.read(1)
        assert ds.tags()["GENE"] == "ERBB2" and np.allclose(band, _spot_values(kinds["heatmap"]), equal_nan=True)
        assert np.allclose(band, widget.prediction.heatmap("ERBB2").raster, equal_nan=True)  # = the CLI's file
    viewer.layers.selection = {kinds["tumor_mask"]}
    viewer.layers.save(str(tmp_path / "mask.tif"), selected=True, plugin="napari-stpredict")
    with rasterio.open(tmp_path / "mask.tif") as ds:
        assert np.array_equal(ds.read(1), kinds["tumor_mask"].data)


def test_geotiffs_saved_from_napari_and_from_the_cli_carry_the_same_tags(predicted, tmp_path):
    """Issue 22: File > Save Layers and ``stpredict predict`` write the same map and mask
    with the same GDAL metadata (one tag builder, io/geotiff.py), the threshold's mode and
    automatic flag included; a map with out-of-domain spots left blank says how many."""
    import rasterio

    from napari_stpredict.inference.export import export_gene_geotiff, export_tumor

    viewer, widget = predicted
    widget.genes_panel.show_out_of_domain.setChecked(True)  # the map as the CLI writes it: every spot
    kinds = _kinds(viewer)
    viewer.layers.selection = {kinds["heatmap"]}
    viewer.layers.save(str(tmp_path / "napari_erbb2.tif"), selected=True, plugin="napari-stpredict")
    viewer.layers.selection = {kinds["tumor_mask"]}
    viewer.layers.save(str(tmp_path / "napari_mask.tif"), selected=True, plugin="napari-stpredict")
    export_gene_geotiff(widget.prediction, "ERBB2", tmp_path / "cli_erbb2.tif")
    export_tumor(widget.prediction, widget.tumor, tmp_path / "cli_mask.tif", tmp_path / "cli.geojson")
    for kind in ("erbb2", "mask"):
        with rasterio.open(tmp_path / f"napari_{kind}.tif") as a, rasterio.open(tmp_path / f"cli_{kind}.tif") as b:
            assert a.tags() == b.tags(), kind
            assert a.transform == b.transform and a.shape == b.shape
            assert np.array_equal(a.read(1), b.read(1), equal_nan=True), kind
    with rasterio.open(tmp_path / "cli_mask.tif") as mask:
        assert {"THRESHOLD", "THRESHOLD_MODE", "THRESHOLD_AUTOMATIC", "MARKERS", "DOMAIN_VERDICT"} <= set(mask.tags())
        assert mask.tags()["THRESHOLD_MODE"] == widget.tumor.mode
    widget.genes_panel.show_out_of_domain.setChecked(False)
    heat = _kinds(viewer)["heatmap"]
    hidden = heat.metadata["stpredict"]["hidden_out_of_domain"]
    viewer.layers.selection = {heat}
    viewer.layers.save(str(tmp_path / "blanked.tif"), selected=True, plugin="napari-stpredict")
    with rasterio.open(tmp_path / "blanked.tif") as a, rasterio.open(tmp_path / "cli_erbb2.tif") as b:
        extra = {k: v for k, v in a.tags().items() if k not in b.tags()}
        assert extra == ({"OUT_OF_DOMAIN_BLANKED": str(hidden)} if hidden else {})
        assert {k: v for k, v in a.tags().items() if k in b.tags()} == b.tags()


def test_cancel_mid_run_leaves_a_usable_viewer(
    make_napari_viewer, qtbot, sample_slide_path, tiny_model_path, tmp_path, monkeypatch
):
    monkeypatch.setenv("STPREDICT_CACHE_DIR", str(tmp_path / "cache"))
    viewer = make_napari_viewer(show=True)
    widget = _open_widget(viewer, sample_slide_path)
    widget.set_model_path(tiny_model_path)
    widget.stride_spin.setValue(20.0)  # thousands of spots: long enough to cancel
    widget.run()
    qtbot.waitUntil(lambda: widget.progress_bar.value() > 0, timeout=120_000)
    widget.cancel()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60_000)
    assert widget.prediction is None and "cancel" in widget.status.text()
    assert not list((tmp_path / "cache").glob("*.h5ad"))  # nothing cached from the cancelled run
    assert widget.run_button.isEnabled()
    widget.stride_spin.setValue(112.0)  # the viewer and the widget still work
    _run(qtbot, widget)
    assert widget.prediction is not None


def _errors():
    from napari.utils.notifications import NotificationSeverity, notification_manager

    return [str(n.message) for n in notification_manager.records if n.severity == NotificationSeverity.ERROR]


def test_corrupt_slide_data_and_bad_checkpoint_give_notifications(
    make_napari_viewer, qtbot, sample_slide_path, tiny_model_path, tmp_path, monkeypatch
):
    import tifffile

    monkeypatch.setenv("STPREDICT_CACHE_DIR", str(tmp_path / "cache"))
    corrupt = tmp_path / "corrupt.tiff"
    shutil.copy(sample_slide_path, corrupt)
    spans = []
    with tifffile.TiffFile(corrupt) as tif:  # zero out the middle tiles of levels 0-2 (thumbnails stay intact)
        for page in tif.pages[:3]:
            per_row = -(-page.imagewidth // page.tilewidth)
            n_rows = -(-page.imagelength // page.tilelength)
            spans += [
                (page.dataoffsets[r * per_row + c], page.databytecounts[r * per_row + c])
                for r in range(n_rows // 3, 2 * n_rows // 3 + 1)
                for c in range(per_row // 3, 2 * per_row // 3 + 1)
            ]
    with open(corrupt, "r+b") as fh:
        for offset, count in spans:
            fh.seek(offset)
            fh.write(b"\0" * count)
    viewer = make_napari_viewer(show=True)
    widget = _open_widget(viewer, corrupt)
    widget.set_model_path(tiny_model_path)
    before = len(_errors())
    _run(qtbot, widget)
    errors = _errors()[before:]
    assert widget.prediction is None and any("corrupt.tiff" in e and "corrupt" in e for e in errors), errors
    bad = tmp_path / "bad.pt"
    bad.write_text("not a model")
    widget.set_model_path(bad)
    _run(qtbot, widget)
    assert any("bad.pt" in e for e in _errors()[before:])
    viewer.layers["corrupt"].visible = False  # still responsive
    assert len(viewer.layers) == 1


def test_corrupt_file_reaches_napari_as_a_clear_reader_error(make_napari_viewer, tmp_path, monkeypatch):
    """With ST Predict as the preferred reader for .svs (napari asks once, "remember my
    choice"), File > Open on a broken file hands napari our clear error, which its reader
    dialog shows; nothing crashes and no layer is added."""
    import napari._qt.qt_viewer as qt_viewer_module
    from napari.settings import get_settings

    seen = []
    monkeypatch.setattr(
        qt_viewer_module,
        "handle_gui_reading",
        lambda filenames, qt_viewer, stack, plugin=None, error=None, **kw: seen.append(str(error)),
    )
    bad = tmp_path / "scan.svs"
    bad.write_bytes(b"II*\x00" + b"\x00" * 64)
    viewer = make_napari_viewer(show=True)
    monkeypatch.setattr(get_settings().plugins, "extension2reader", {"*.svs": "napari-stpredict"})
    viewer.window._qt_viewer._qt_open([str(bad)], stack=False)  # what File > Open does
    assert seen and "scan.svs" in seen[0] and "truncated" in seen[0]
    assert len(viewer.layers) == 0


_REAL_ORDER = r"""
import sys, time
import napari
from qtpy.QtWidgets import QApplication
assert "timm" not in sys.modules and "torchvision" not in sys.modules
viewer = napari.Viewer(show=True)                      # the viewer exists first ...
viewer.open(sys.argv[1], plugin="napari-stpredict")
_, widget = viewer.window.add_plugin_dock_widget("napari-stpredict", "Predict gene expression")
widget.set_model_path(sys.argv[2])
widget.run()                                           # ... then the widget imports timm and loads the model
t0 = time.time()
while (widget.worker is not None or widget.prediction is None) and time.time() - t0 < 120:
    QApplication.processEvents()
    time.sleep(0.05)
assert widget.prediction is not None, widget.status.text()
assert sys.modules.get("triton", "absent") is None     # triton was blocked before torchvision/timm loaded
viewer.reset_view()
viewer.screenshot(canvas_only=True, flash=False)       # and OpenGL still renders
print("OK", len(widget.prediction))
viewer.close()
"""


def test_viewer_first_then_widget_loads_the_model_in_a_fresh_process(sample_slide_path, tiny_model_path, tmp_path):
    """The order napari uses (viewer, then plugin widget importing timm/torchvision) must not
    crash under software OpenGL (Mesa llvmpipe, as here under Xvfb)."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, STPREDICT_CACHE_DIR=str(tmp_path / "cache"))
    out = subprocess.run(
        [sys.executable, "-c", _REAL_ORDER, str(sample_slide_path), str(tiny_model_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "OK" in out.stdout


def test_default_model_in_the_widget(make_napari_viewer, qtbot, sample_slide_path, tmp_path, monkeypatch):
    """The bundled model, as a user runs it: ERBB2 map, and measured vs predicted on the held-out sample."""
    monkeypatch.setenv("STPREDICT_CACHE_DIR", str(tmp_path / "cache"))
    viewer = make_napari_viewer(show=True)
    widget = _open_widget(viewer, sample_slide_path)
    widget.device_combo.setCurrentText("cpu")
    _run(qtbot, widget)
    assert widget.prediction is not None, widget.status.text()
    assert widget.prediction.meta.model.name == "cmrcnet_her2st.pt"
    assert "ERBB2 (predicted) [her2st_C2]" in viewer.layers and "B4, C3, C4, C5, C6" in widget.model_info.text()
    assert widget.last_r > 0.2, widget.r_label.text()  # predicted vs measured ERBB2 at the sample's spots
    assert "ERBB2" in widget.markers_edit.text()


def test_region_from_a_shapes_layer(
    make_napari_viewer, qtbot, sample_slide_path, tiny_model_path, tmp_path, monkeypatch
):
    monkeypatch.setenv("STPREDICT_CACHE_DIR", str(tmp_path / "cache"))
    viewer = make_napari_viewer(show=True)
    widget = _open_widget(viewer, sample_slide_path)
    widget.set_model_path(tiny_model_path)
    # a rectangle in world coordinates (µm), as a user draws it over the tissue
    y0, x0, y1, x1 = 1500.0, 2000.0, 3000.0, 3500.0
    viewer.add_shapes(
        [np.array([[y0, x0], [y0, x1], [y1, x1], [y1, x0]])], shape_type="polygon", name="region", units=("µm", "µm")
    )
    widget.region_combo.setCurrentText("region")
    _run(qtbot, widget)
    xy_um = widget.prediction.l0_centres * 0.688
    assert len(xy_um) > 10
    assert (xy_um[:, 0] >= x0 - 1).all() and (xy_um[:, 0] <= x1 + 1).all()
    assert (xy_um[:, 1] >= y0 - 1).all() and (xy_um[:, 1] <= y1 + 1).all()


def test_out_of_domain_slide_shows_a_banner_and_no_tumour(make_napari_viewer, qtbot, wsi_dir, tmp_path, monkeypatch):
    """The bundled model on normal skin: a visible banner says the slide is out of domain,
    a notification too, the out-of-domain layer is there and no spot is called tumour."""
    from napari.utils.notifications import NotificationSeverity, notification_manager

    monkeypatch.setenv("STPREDICT_CACHE_DIR", str(tmp_path / "cache"))
    viewer = make_napari_viewer(show=True)
    widget = _open_widget(viewer, wsi_dir / "CMU-1-Small-Region.svs")
    widget.device_combo.setCurrentText("cpu")
    before = len(notification_manager.records)
    _run(qtbot, widget)
    assert widget.prediction is not None, widget.status.text()
    assert widget.trust_banner.isVisible() and "OUT OF DOMAIN" in widget.trust_banner.text()
    warnings = [
        str(n.message) for n in notification_manager.records[before:] if n.severity == NotificationSeverity.WARNING
    ]
    assert any("OUT OF DOMAIN" in w for w in warnings), warnings
    kinds = _kinds(viewer)
    assert "out_of_domain" in kinds and int(kinds["tumor_mask"].data.sum()) == 0
    assert "out of domain" in widget.status.text()
    # On the canvas too (issue 23.10): the map of tissue the model never saw is left blank,
    # the caption (in any screenshot) says why, a switch draws it, a saved GeoTIFF says so.
    from napari_stpredict._qt.common import canvas_caption

    heat = kinds["heatmap"]
    assert np.isnan(np.asarray(heat.data)).all()
    assert "OUT OF DOMAIN" in canvas_caption(viewer).text and "hidden" in canvas_caption(viewer).text
    viewer.layers.selection.active = heat
    assert canvas_caption(viewer).text.endswith("OUT OF DOMAIN: tissue unlike the model's training data; map hidden")
    widget.genes_panel.show_out_of_domain.setChecked(True)
    heat = _kinds(viewer)["heatmap"]
    assert np.isfinite(np.asarray(heat.data)).any()
    assert "not meaningful" in canvas_caption(viewer).text
    widget.genes_panel.show_out_of_domain.setChecked(False)
    heat = _kinds(viewer)["heatmap"]
    import tifffile

    from napari_stpredict._writer import write_heatmap_geotiff

    # what File > Save Layers hands the plugin's writer: the layer's data and attributes
    (saved,) = write_heatmap_geotiff(str(tmp_path / "skin_erbb2.tif"), heat.data, heat._get_state())
    with tifffile.TiffFile(saved) as tif:
        tags = tif.pages[0].tags["GDAL_METADATA"].value
    assert "DOMAIN_VERDICT" in tags and "out of domain" in tags and "OUT_OF_DOMAIN_BLANKED" in tags
    _kinds(viewer)["out_of_domain"].visible = True
    viewer.layers.selection.active = _kinds(viewer)["out_of_domain"]  # its own caption and bar
    assert canvas_caption(viewer).text.startswith("Out of domain: distance to the training images")
    assert _kinds(viewer)["out_of_domain"].colorbar.visible and not _kinds(viewer)["heatmap"].colorbar.visible
    widget.threshold_mode.setCurrentText("Automatic per slide")  # the named per-slide option
    assert widget.tumor.mode == "slide" and "per slide" in widget.threshold_label.toolTip()


def test_in_domain_sample_has_no_banner_and_refused_stain_is_a_notification(
    make_napari_viewer, qtbot, sample_slide_path, wsi_dir, tmp_path, monkeypatch
):
    monkeypatch.setenv("STPREDICT_CACHE_DIR", str(tmp_path / "cache"))
    viewer = make_napari_viewer(show=True)
    widget = _open_widget(viewer, sample_slide_path)
    widget.device_combo.setCurrentText("cpu")
    _run(qtbot, widget)
    assert widget.prediction.trust.domain.verdict == "in domain"
    assert not widget.trust_banner.isVisible() and widget.tumor.mode == "absolute"
    viewer.open(str(wsi_dir / "ndpi_test3-DAPI-2-387.ndpi"), plugin="napari-stpredict")
    widget.slide_combo.setCurrentText(viewer.layers[-1].name)
    before = len(_errors())
    _run(qtbot, widget)
    errors = _errors()[before:]
    assert any("ndpi_test3-DAPI-2-387.ndpi" in e and "fluorescence" in e for e in errors), errors
    assert widget.run_button.isEnabled()


@pytest.fixture
def png_without_mpp(sample_slide_path, tmp_path):
    """A crop of the sample saved as PNG: napari's own reader opens it, in pixels, with no mpp."""
    from PIL import Image

    from napari_stpredict.io.slide import open_slide

    with open_slide(sample_slide_path) as slide:
        crop = slide.read_region((1500, 1000), 0, (3000, 2600))
    path = tmp_path / "crop.png"
    Image.fromarray(crop).save(path)
    return path


def test_layers_lie_on_a_slide_opened_by_naparis_own_reader(
    make_napari_viewer, qtbot, png_without_mpp, tiny_model_path, tmp_path, monkeypatch
):
    """Item 1: no mpp in the file, napari's reader (pixels), mpp typed into the widget: a
    spot's world position through the slide layer equals that through every prediction layer."""
    monkeypatch.setenv("STPREDICT_CACHE_DIR", str(tmp_path / "cache"))
    viewer = make_napari_viewer(show=True)
    viewer.open(str(png_without_mpp), plugin="napari")
    slide_layer = viewer.layers["crop"]
    slide_layer.translate = (100.0, 250.0)  # as if the user moved it: layers must follow
    _, widget = viewer.window.add_plugin_dock_widget("napari-stpredict", "Predict gene expression")
    widget.set_model_path(tiny_model_path)
    widget.slide_combo.setCurrentText("crop")
    assert widget.mpp_spin.isEnabled() and widget.mpp_spin.value() == 0.0
    widget.mpp_spin.setValue(0.688)
    _run(qtbot, widget)
    assert widget.prediction is not None, widget.status.text()
    kinds = _kinds(viewer)
    obs = widget.prediction.adata.obs
    for i in (0, len(obs) // 2, len(obs) - 1):
        x, y, row, col = obs["x"].iloc[i], obs["y"].iloc[i], obs["grid_row"].iloc[i], obs["grid_col"].iloc[i]
        expected = np.asarray(slide_layer.data_to_world((y - 0.5, x - 0.5)))
        for kind in ("heatmap", "tumor_mask", "confidence"):
            assert np.allclose(kinds[kind].data_to_world(_cell(kinds[kind], row, col)), expected, atol=1e-6), kind
    contour = kinds["tumor_contour"]
    if len(contour.data):
        vertex = contour.data[0][0]  # level-0 (y, x)
        assert np.allclose(contour.data_to_world(vertex), slide_layer.data_to_world(vertex - 0.5), atol=1e-6)
    assert tuple(str(u) for u in heat_units(kinds["heatmap"])) == tuple(str(u) for u in heat_units(slide_layer))
    # Issue 20.5: a layer with no slide file is cached by its pixels; the rerun runs no model.
    assert widget.prediction.meta.cache == "miss"
    calls = []
    original = widget.model.embed_with_features
    widget.model.embed_with_features = lambda *a, **k: calls.append(1) or original(*a, **k)
    _run(qtbot, widget)
    assert widget.prediction.meta.cache == "hit" and calls == [], widget.prediction.adata.uns["stpredict"]["cache"]


def heat_units(layer):
    return layer.units[-2:]


def test_a_corrected_resolution_changes_the_next_run(
    make_napari_viewer, qtbot, png_without_mpp, sample_slide_path, tiny_model_path, tmp_path, monkeypatch
):
    """Item 3: the field stays editable after a run on a slide without mpp, a new value is
    used, and another slide never inherits it."""
    monkeypatch.setenv("STPREDICT_CACHE_DIR", str(tmp_path / "cache"))
    viewer = make_napari_viewer(show=True)
    viewer.open(str(png_without_mpp), plugin="napari")
    _, widget = viewer.window.add_plugin_dock_widget("napari-stpredict", "Predict gene expression")
    widget.set_model_path(tiny_model_path)
    widget.slide_combo.setCurrentText("crop")
    widget.mpp_spin.setValue(0.688)
    _run(qtbot, widget)
    first = len(widget.prediction)
    assert widget.mpp_spin.isEnabled()
    widget.mpp_spin.setValue(1.0)  # corrected: a coarser scan, so fewer 112 µm spots
    _run(qtbot, widget)
    assert widget.prediction.meta.mpp_x == pytest.approx(1.0) and len(widget.prediction) > first
    viewer.open(str(sample_slide_path), plugin="napari-stpredict")  # records its mpp
    widget.slide_combo.setCurrentText("her2st_C2")
    assert not widget.mpp_spin.isEnabled() and widget.mpp_spin.value() == pytest.approx(0.688)
    widget.slide_combo.setCurrentText("crop")  # back: the value typed for it
    assert widget.mpp_spin.isEnabled() and widget.mpp_spin.value() == pytest.approx(1.0)


def _warnings():
    from napari.utils.notifications import NotificationSeverity, notification_manager

    return [str(n.message) for n in notification_manager.records if n.severity == NotificationSeverity.WARNING]


def test_two_slides_in_one_window_keep_their_own_results(
    make_napari_viewer, qtbot, sample_slide_path, png_without_mpp, tiny_model_path, tmp_path, monkeypatch
):
    """Items 2 and 4: each slide keeps its layers, mask and r; the sample's measured spots
    never appear over another slide; switching the slide in the dock switches its results."""
    monkeypatch.setenv("STPREDICT_CACHE_DIR", str(tmp_path / "cache"))
    viewer = make_napari_viewer(show=True)
    widget = _open_widget(viewer, sample_slide_path)
    widget.set_model_path(tiny_model_path)
    _run(qtbot, widget)
    sample_r = widget.last_r
    assert np.isfinite(sample_r) and "ERBB2 (measured) [her2st_C2]" in viewer.layers
    viewer.open(str(png_without_mpp), plugin="napari")
    widget.slide_combo.setCurrentText("crop")
    assert widget.prediction is None and not widget.gene_list.isEnabled()  # nothing predicted for it yet
    assert widget.status.text() == "crop: not predicted yet"  # issue 25.6: not the sample's last message
    widget.run()  # no resolution typed yet: the whole message in the dock (napari's toast cuts it short)
    assert widget.worker is None and "enter its resolution (µm per pixel)" in widget.status.text()
    widget.mpp_spin.setValue(0.688)
    _run(qtbot, widget)
    names = {layer.name for layer in viewer.layers}
    assert {
        "ERBB2 (predicted) [her2st_C2]",
        "ERBB2 (predicted) [crop]",
        "tumour (predicted) [her2st_C2]",
        "tumour (predicted) [crop]",
    } <= names
    assert not any(name.endswith("(measured) [crop]") for name in names)  # the sample's spots stay the sample's
    assert "ERBB2 (measured) [her2st_C2]" in names and widget.spots is None and widget.r_label.text() == ""
    crop_mask = widget.tumor
    widget.slide_combo.setCurrentText("her2st_C2")  # back to the first slide: its own results
    assert widget.prediction.meta.slide.name == "her2st_C2.tiff" and widget.last_r == sample_r
    assert widget.tumor is not crop_mask and "Pearson r" in widget.r_label.text()
    # issue 23.14: only the chosen slide's prediction layers are shown (reversibly) ...
    assert viewer.layers["ERBB2 (predicted) [her2st_C2]"].visible
    assert not viewer.layers["ERBB2 (predicted) [crop]"].visible
    assert not viewer.layers["tumour (predicted) [crop]"].visible
    # ... and issue 23.11: the threshold slider follows the slide (range and position)
    panel = widget.tumour_panel
    assert abs(panel.threshold_at(widget.threshold_slider.value()) - widget.tumor.threshold) < 0.02 * (
        widget.tumor.score.max() - widget.tumor.score.min()
    )
    assert panel._score_range[0] <= widget.tumor.score.min() and panel._score_range[1] >= widget.tumor.score.max()
    widget.slide_combo.setCurrentText("crop")
    assert viewer.layers["ERBB2 (predicted) [crop]"].visible and viewer.layers["tumour (predicted) [crop]"].visible
    assert not viewer.layers["ERBB2 (predicted) [her2st_C2]"].visible
    assert abs(panel.threshold_at(widget.threshold_slider.value()) - crop_mask.threshold) < 0.02 * (
        crop_mask.score.max() - crop_mask.score.min()
    )
    widget.slide_combo.setCurrentText("her2st_C2")
    with pytest.raises(ValueError, match="outside this slide"):  # spots of another slide are refused
        import anndata as ad

        spots = ad.read_h5ad(sample_slide_path.with_name("her2st_C2_spots.h5ad"))
        spots.obsm["spatial"] = spots.obsm["spatial"] + 20_000
        path = tmp_path / "elsewhere.h5ad"
        spots.write_h5ad(path)
        widget.load_spots(path)


def test_rerun_is_a_cache_hit_that_does_not_call_the_model(predicted, qtbot):
    viewer, widget = predicted
    calls = []
    original = widget.model.embed_with_features
    widget.model.embed_with_features = lambda *a, **k: calls.append(1) or original(*a, **k)
    _run(qtbot, widget)  # same slide, same settings: a fresh cancel event must not change the key
    assert widget.prediction.meta.cache == "hit" and calls == []
    assert "from cache" in widget.status.text()


def test_unknown_gene_typed_gets_a_message_and_the_mask_does_not_hide_the_colours(predicted):
    viewer, widget = predicted
    before = len(_warnings())
    widget.gene_search.setText("NOTAGENE")
    widget._select_typed_gene()  # what Enter does
    assert any("NOTAGENE is not predicted" in w for w in _warnings()[before:])
    kinds = _kinds(viewer)
    assert not kinds["tumor_mask"].visible and kinds["tumor_contour"].visible


def test_cancel_during_tissue_detection_in_the_widget(
    make_napari_viewer, qtbot, wsi_dir, tiny_model_path, tmp_path, monkeypatch
):
    import time

    monkeypatch.setenv("STPREDICT_CACHE_DIR", str(tmp_path / "cache"))
    viewer = make_napari_viewer(show=True)
    widget = _open_widget(viewer, wsi_dir / "CMU-1-Small-Region.svs")
    widget.set_model_path(tiny_model_path)
    widget.run()
    qtbot.waitUntil(lambda: "detecting tissue" in widget.status.text(), timeout=60_000)
    t0 = time.perf_counter()
    widget.cancel()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=10_000)
    assert time.perf_counter() - t0 < 1.0
    assert widget.status.text() == "cancelled" and widget.prediction is None and widget.run_button.isEnabled()


def test_hover_readout_names_gene_units_and_tumour_score_whatever_layer_is_selected(predicted):
    viewer, widget = predicted
    viewer.layers.selection.active = viewer.layers["her2st_C2"]  # not a prediction layer
    obs = widget.prediction.adata.obs
    x, y = obs["x"].iloc[len(obs) // 2], obs["y"].iloc[len(obs) // 2]
    world = viewer.layers["her2st_C2"].data_to_world((y - 0.5, x - 0.5))
    text = widget.readout_at(world)
    expected = widget.prediction.expression("ERBB2")[len(obs) // 2]
    assert text.startswith(f"ERBB2 {expected:.2f} log1p(counts per 10,000)") and "tumour score" in text
    assert widget.readout_at((-1e6, -1e6)) == "no prediction here"


def test_two_genes_side_by_side_in_one_click(predicted):
    from qtpy.QtCore import Qt

    viewer, widget = predicted
    for gene in ("ERBB2", "CD24"):
        widget.gene_list.findItems(gene, Qt.MatchStartsWith)[0].setSelected(True)
    n_layers = len(viewer.layers)
    widget.side_by_side_button.click()
    assert viewer.canvas.grid.enabled and viewer.canvas.grid.stride == 2
    assert viewer.canvas.grid.actual_shape(viewer.layers) == (1, 2)  # two views, nothing else
    names = [layer.name for layer in viewer.layers][:4]
    assert names == [
        "her2st_C2",
        "ERBB2 (predicted) [her2st_C2]",
        "slide, second view [her2st_C2]",
        "CD24 (predicted) [her2st_C2]",
    ]
    assert viewer.layers[2].data is viewer.layers[0].data or viewer.layers[2].data[0] is viewer.layers[0].data[0]
    # issue 23.12: one colour bar per map (their ranges differ), no canvas caption over a title
    from napari_stpredict._qt.common import canvas_caption

    erbb2, cd24 = viewer.layers["ERBB2 (predicted) [her2st_C2]"], viewer.layers["CD24 (predicted) [her2st_C2]"]
    assert erbb2.colorbar.visible and cd24.colorbar.visible and not canvas_caption(viewer).visible
    widget.side_by_side_button.click()  # back
    assert not viewer.canvas.grid.enabled and len(viewer.layers) == n_layers + 1  # CD24's heatmap stays
    assert viewer.layers["tumour (predicted) [her2st_C2]"].visible
    # one map on top with its own bar and caption, the other hidden (not stacked), no titles
    assert erbb2.visible and not cd24.visible and erbb2.colorbar.visible and not cd24.colorbar.visible
    assert canvas_caption(viewer).visible and canvas_caption(viewer).text.startswith("ERBB2")
    assert not erbb2.name_overlay.visible and not cd24.name_overlay.visible


def test_caption_and_colour_bar_follow_whatever_prediction_layer_is_selected(predicted):
    """Issue 23.13: the confidence map, the tumour layers and the measured spots each get
    their own caption (and bar), not the gene map's (the out-of-domain map: the skin test)."""
    from napari_stpredict._qt.common import canvas_caption

    viewer, widget = predicted
    kinds = _kinds(viewer)
    caption = canvas_caption(viewer)
    kinds["confidence"].visible = True  # hidden by default: shown, then selected, as a user would
    viewer.layers.selection.active = kinds["confidence"]
    assert caption.text.startswith("Confidence: cosine similarity")
    assert kinds["confidence"].colorbar.visible and not kinds["heatmap"].colorbar.visible
    viewer.layers.selection.active = kinds["tumor_contour"]
    assert caption.text.startswith("Tumour contour, red")
    viewer.layers.selection.active = kinds["measured"]
    assert "MEASURED" in caption.text and kinds["measured"].border_width_is_relative
    viewer.layers.selection.active = kinds["heatmap"]
    assert caption.text.startswith("ERBB2: predicted") and kinds["heatmap"].colorbar.visible
    assert not kinds["confidence"].colorbar.visible


def test_a_pixel_slide_can_be_put_in_um_beside_a_slide_in_um(
    make_napari_viewer, qtbot, sample_slide_path, png_without_mpp, tiny_model_path, tmp_path, monkeypatch
):
    """Issue 23.14: a slide opened by napari's reader (pixels) beside one opened in µm: once
    its mpp is typed, one click puts it (and its maps) in µm, at its true size."""
    monkeypatch.setenv("STPREDICT_CACHE_DIR", str(tmp_path / "cache"))
    viewer = make_napari_viewer(show=True)
    widget = _open_widget(viewer, sample_slide_path)
    widget.set_model_path(tiny_model_path)
    viewer.open(str(png_without_mpp), plugin="napari")
    widget.slide_combo.setCurrentText("crop")
    button = widget.run_panel.to_um_button
    assert not button.isEnabled()  # no resolution yet
    widget.mpp_spin.setValue(0.688)
    assert button.isEnabled()
    _run(qtbot, widget)
    heat_before = viewer.layers["ERBB2 (predicted) [crop]"]
    scale_px = np.asarray(heat_before.scale[-2:], float)
    button.click()
    crop = viewer.layers["crop"]
    assert tuple(str(u) for u in crop.units[-2:]) == ("micrometer", "micrometer")
    np.testing.assert_allclose(crop.scale[-2:], [0.688, 0.688])
    heat = viewer.layers["ERBB2 (predicted) [crop]"]
    np.testing.assert_allclose(np.asarray(heat.scale[-2:], float), scale_px * 0.688, rtol=1e-6)
    assert tuple(str(u) for u in heat.units[-2:]) == ("micrometer", "micrometer")
    # the map still sits on the slide: a spot's level-0 centre maps to the same world point through both
    obs = widget.prediction.adata.obs
    x, y = float(obs["x"].iloc[0]), float(obs["y"].iloc[0])
    on_slide = np.asarray(crop.data_to_world((y, x)))[-2:]
    row, col = int(obs["grid_row"].iloc[0]), int(obs["grid_col"].iloc[0])
    on_map = np.asarray(heat.data_to_world(_cell(heat, row, col)))[-2:]
    np.testing.assert_allclose(on_map, on_slide, atol=0.688)
    assert not button.isEnabled()  # in µm now


def _caption_gene_and_top_map(viewer, widget):
    from napari_stpredict._qt.common import canvas_caption

    top = widget.layers.topmost_map()
    return canvas_caption(viewer).text.split(":")[0], top.metadata["stpredict"].get("gene"), top


def test_caption_names_the_map_on_top_after_pinning_browsing_rerun_and_side_by_side(qtbot, predicted):
    """Issue 25.1, each sequence a newcomer met: pin CD24 + EPCAM, type GRB7 + Enter, rerun,
    side by side and back; after each the caption and the one shown colour bar belong to
    the visible map on top, and no map holds the previous run's values."""
    from qtpy.QtCore import Qt

    viewer, widget = predicted
    widget.gene_list.clearSelection()
    for gene in ("CD24", "EPCAM"):
        widget.gene_list.findItems(gene, Qt.MatchStartsWith)[0].setSelected(True)
    widget.show_selected_genes()
    caption, top_gene, top = _caption_gene_and_top_map(viewer, widget)
    assert caption == top_gene == "EPCAM" and top.colorbar.visible

    widget.gene_search.setText("GRB7")
    widget._select_typed_gene()  # what Enter does
    caption, top_gene, top = _caption_gene_and_top_map(viewer, widget)
    assert caption == top_gene == "GRB7", (caption, top_gene)  # browsing is never hidden under pinned maps
    bars = [layer.name for layer in viewer.layers if getattr(layer, "colorbar", None) and layer.colorbar.visible]
    assert bars == [top.name]

    widget.gene_search.setText("")
    widget.stride_spin.setValue(widget.stride_spin.value() * 2)  # a rerun that changes every value
    _run(qtbot, widget)
    caption, top_gene, top = _caption_gene_and_top_map(viewer, widget)
    assert caption == top_gene == "ERBB2", (caption, top_gene)
    for layer in viewer.layers:  # the pinned maps hold the new run's values, on its grid
        meta = layer.metadata.get("stpredict", {})
        if meta.get("kind") == "heatmap":
            assert np.allclose(_spot_values(layer), widget.prediction.heatmap(meta["gene"]).raster, equal_nan=True), (
                layer.name
            )

    widget.gene_list.clearSelection()
    for gene in ("CD24", "GRB7"):
        widget.gene_list.findItems(gene, Qt.MatchStartsWith)[0].setSelected(True)
    widget.side_by_side_button.click()
    widget.side_by_side_button.click()  # back to one view
    caption, top_gene, top = _caption_gene_and_top_map(viewer, widget)
    assert caption == top_gene, (caption, top_gene)

    lower = next(
        layer
        for layer in viewer.layers
        if layer.visible and layer.metadata.get("stpredict", {}).get("kind") == "heatmap" and layer is not top
    )
    viewer.layers.selection.active = lower  # a map under another, selected: the caption says so
    from napari_stpredict._qt.common import canvas_caption

    text = canvas_caption(viewer).text
    assert text.startswith(lower.metadata["stpredict"]["gene"]) and f"{top.name} is drawn over it" in text


def test_the_dock_fits_its_controls_beside_the_scroll_bar(make_napari_viewer, qtbot):
    """Issue 25.6: at the dock's default width no control of the Run panel runs under the
    vertical scroll bar (Cancel, the spin boxes, the progress bar)."""
    viewer = make_napari_viewer(show=True)  # laid out as on screen (a hidden window is not)
    _, widget = viewer.window.add_plugin_dock_widget("napari-stpredict", "Predict gene expression")
    qtbot.waitExposed(widget)
    qtbot.wait(200)  # the layout settles
    viewport = widget._scroll.viewport()
    room = viewport.width()
    for control in (widget.cancel_button, widget.run_button, widget.stride_spin, widget.mpp_spin, widget.progress_bar):
        right = control.mapTo(viewport, control.rect().topRight()).x()
        assert right <= room, (control, right, room)
