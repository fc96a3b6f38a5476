"""SpatialData export: `spatialdata.read_zarr` of what ``--export spatialdata`` wrote, checked
against the prediction (table <-> shapes alignment, spot centres, transforms to pixels and
micrometres, tumour contours against the spot calls), and its absence named in one line."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import predict_cli


@pytest.fixture(scope="module")
def exported(sample_slide_path, tiny_model_path, tmp_path_factory):
    pytest.importorskip("spatialdata")  # the extra; CI installs it (a skip fails there)
    tmp = tmp_path_factory.mktemp("sdata")
    os.environ["STPREDICT_CACHE_DIR"] = str(tmp / "cache")
    try:
        out = tmp / "out"
        rc = predict_cli(sample_slide_path, tiny_model_path, "--out", str(out), "--export", "spatialdata")
    finally:
        os.environ.pop("STPREDICT_CACHE_DIR", None)
    assert rc == 0
    return out / "her2st_C2"


@pytest.mark.slow
def test_the_export_reads_back_with_table_and_shapes_aligned(exported, sample_slide_path):
    import spatialdata as sd
    from spatialdata.models import get_table_keys

    from napari_stpredict.inference.prediction import Prediction
    from napari_stpredict.io.slide import open_slide

    sdata = sd.read_zarr(exported / "prediction.zarr")
    prediction = Prediction.load(exported / "prediction.h5ad")
    assert set(sdata.images) == {"slide"} and set(sdata.shapes) == {"spots", "tumour"}
    table, spots = sdata["table"], sdata["spots"]
    regions, region_key, instance_key = get_table_keys(table)
    assert regions == "spots" and region_key == "region" and instance_key == "spot_id"
    assert len(table) == len(spots) == len(prediction)
    # each row annotates the circle with its spot_id, at the prediction's spot centre
    rows = spots.loc[table.obs[instance_key].to_numpy()]
    centres = np.column_stack([rows.geometry.x, rows.geometry.y])
    assert np.allclose(centres, prediction.adata.obsm["spatial"], atol=1e-6)
    assert np.allclose(rows["radius"], min(prediction.grid.stride) / 2)
    assert list(table.var_names) == list(prediction.genes)
    assert np.allclose(table.X, prediction.adata.X, atol=1e-6)
    assert (table.obs["tumour"].to_numpy(bool) == prediction.adata.obs["tumour"].to_numpy(bool)).all()
    assert "Research use only" in table.uns["stpredict"]["note"]

    with open_slide(sample_slide_path) as slide:
        width, height = slide.dimensions
        mpp = slide.mpp
        thumb = slide.thumbnail(4096)
    # the image: the slide downsampled, mapped onto level-0 pixels and onto micrometres
    image = sdata["slide"]["scale0"]["image"]
    assert image.shape == (3, *thumb.shape[:2]) and max(image.shape) == 4096
    assert np.array_equal(image.values.transpose(1, 2, 0), thumb[..., :3])
    to_pixels = sd.transformations.get_transformation(sdata["slide"], "global")
    corner = to_pixels.to_affine_matrix(("x", "y"), ("x", "y")) @ [image.shape[2], image.shape[1], 1]
    assert np.allclose(corner[:2], [width, height], atol=1e-6)
    to_um = sd.transformations.get_transformation(spots, "micrometres")
    centre_um = to_um.to_affine_matrix(("x", "y"), ("x", "y")) @ [*centres[0], 1]
    assert np.allclose(centre_um[:2], centres[0] * np.asarray(mpp), rtol=1e-9)


def test_the_tumour_contours_hold_every_called_spot_and_no_other(exported):
    import spatialdata as sd
    from shapely import points
    from shapely.ops import unary_union

    sdata = sd.read_zarr(exported / "prediction.zarr")
    table = sdata["table"]
    tumour = unary_union(list(sdata["tumour"].geometry))
    centres = table.obsm["spatial"]
    inside = tumour.contains(points(centres[:, 0], centres[:, 1]))
    called = table.obs["tumour"].to_numpy(bool)
    assert called.any() and (~called).any()
    assert np.array_equal(inside, called)


@pytest.mark.slow
def test_an_export_is_replaced_whole_or_not_at_all(exported, tmp_path):
    import spatialdata as sd

    from napari_stpredict.errors import StPredictError
    from napari_stpredict.inference.spatial_data import write_spatialdata

    sdata = sd.read_zarr(exported / "prediction.zarr")
    target = tmp_path / "copy.zarr"
    write_spatialdata(sdata, target)
    with pytest.raises(StPredictError, match="already exists"):
        write_spatialdata(sdata, target)
    write_spatialdata(sdata, target, overwrite=True)
    assert len(sd.read_zarr(target)["table"]) == len(sdata["table"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy.zarr"]  # no partial store left


def test_without_the_extra_the_export_is_refused_in_one_line_naming_it(sample_slide_path, tmp_path):
    # A real interpreter in which spatialdata cannot be imported (None in sys.modules is
    # how Python marks a module as absent).
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["spatialdata"] = None
        from napari_stpredict.cli import main
        rc = main(["predict", {str(sample_slide_path)!r}, "--out", {str(tmp_path / "out")!r},
                   "--export", "spatialdata"])
        assert "torch" not in sys.modules, "the model was loaded before the check"
        sys.exit(rc)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert 'pip install "napari-stpredict[spatialdata]"' in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()
