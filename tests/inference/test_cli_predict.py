"""`stpredict predict`: outputs for a good slide, a clear error and non-zero exit for a bad one."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import predict_cli


@pytest.mark.slow
def test_corrupt_slide_among_good_ones(sample_slide_path, tiny_model_path, tmp_path, capsys, monkeypatch):
    from napari_stpredict.cli import main

    monkeypatch.setenv("STPREDICT_CACHE_DIR", str(tmp_path / "cache"))
    bad = tmp_path / "broken.svs"
    bad.write_bytes(b"II*\x00" + b"\x00" * 100)
    out = tmp_path / "out"
    rc = main(
        [
            "predict",
            str(bad),
            str(sample_slide_path),
            "--model",
            str(tiny_model_path),
            "--out",
            str(out),
            "--genes",
            "ERBB2",
            "grb7",
            "--device",
            "cpu",
            "--batch-size",
            "48",
        ]
    )  # any case: the model's spelling
    assert rc == 1
    err = capsys.readouterr().err
    assert "broken.svs" in err and "truncated" in err
    folder = out / "her2st_C2"
    for name in (
        "prediction.h5ad",
        "ERBB2.tif",
        "GRB7.tif",
        "tumor_mask.tif",
        "tumor.geojson",
        "overview.png",
        "config.yaml",
    ):
        assert (folder / name).exists(), name
    config = yaml.safe_load((folder / "config.yaml").read_text())
    assert config["genes"] == ["ERBB2", "GRB7"] and config["threshold_automatic"] and config["spots"] > 300
    assert json.loads((folder / "tumor.geojson").read_text())["type"] == "FeatureCollection"
    assert not list(out.rglob("*.part"))
    from PIL import Image

    assert max(Image.open(folder / "overview.png").size) == 1024


def test_predict_rejects_unknown_genes_and_bad_roi(sample_slide_path, tiny_model_path, tmp_path, capsys):

    assert predict_cli(sample_slide_path, tiny_model_path, "--out", str(tmp_path), "--genes", "NOTAGENE") == 2
    assert "NOTAGENE" in capsys.readouterr().err
    assert predict_cli(sample_slide_path, tiny_model_path, "--out", str(tmp_path), "--roi", "5,5,1") == 2
    assert "--roi" in capsys.readouterr().err


@pytest.mark.slow
def test_roi_from_geojson(sample_slide_path, tiny_model_path, tmp_path, monkeypatch):
    from napari_stpredict.inference import Prediction

    monkeypatch.setenv("STPREDICT_CACHE_DIR", str(tmp_path / "cache"))
    poly = [[2000, 2000], [5000, 2000], [5000, 5000], [2000, 5000], [2000, 2000]]
    roi = tmp_path / "roi.geojson"
    roi.write_text(
        json.dumps(
            {
                "type": "FeatureCollection",
                "features": [
                    {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [poly]}, "properties": {}}
                ],
            }
        )
    )
    assert (
        predict_cli(
            sample_slide_path, tiny_model_path, "--out", str(tmp_path / "o"), "--roi", str(roi), "--device", "cpu"
        )
        == 0
    )
    p = Prediction.load(tmp_path / "o" / "her2st_C2" / "prediction.h5ad")
    assert (p.l0_centres >= 2000).all() and (p.l0_centres <= 5000).all()


@pytest.mark.slow
def test_second_run_from_the_cache_writes_the_same_outputs(
    sample_slide_path, tiny_model_path, tmp_path, capsys, monkeypatch
):
    """The README's main command run twice: the rerun loads the cached prediction."""
    from napari_stpredict.cli import main

    monkeypatch.setenv("STPREDICT_CACHE_DIR", str(tmp_path / "cache"))
    args = ["predict", str(sample_slide_path), "--model", str(tiny_model_path), "--device", "cpu"]
    assert main(args + ["--out", str(tmp_path / "first")]) == 0
    assert "(predicted)" in capsys.readouterr().out
    assert main(args + ["--out", str(tmp_path / "second")]) == 0
    assert "(cached)" in capsys.readouterr().out
    masks = [json.loads((tmp_path / run / "her2st_C2" / "tumor.geojson").read_text()) for run in ("first", "second")]
    assert masks[0] == masks[1]
    configs = [
        yaml.safe_load((tmp_path / run / "her2st_C2" / "config.yaml").read_text()) for run in ("first", "second")
    ]
    assert configs[0]["markers"] == configs[1]["markers"] == ["ERBB2", "GRB7", "EPCAM"]


def test_slide_errors_name_the_given_path_once(tmp_path):
    from napari_stpredict.cli._common import slide_error as _slide_error

    path = tmp_path / "scans" / "a.svs"
    assert _slide_error(path, ValueError("a.svs: no resolution")) == f"error: {path}: no resolution"
    assert _slide_error(path, ValueError(f"{path}: truncated")) == f"error: {path}: truncated"
    assert _slide_error(path, OSError("disk full")) == f"error: {path}: disk full"


@pytest.mark.slow
def test_the_spot_table_carries_each_spots_tumour_call(sample_slide_path, tiny_model_path, tmp_path, monkeypatch):
    """Issue 25.5: prediction.h5ad and the CSV spot table join the mask to the spots."""
    import anndata as ad
    import numpy as np
    import pandas as pd
    import tifffile
    from conftest import predict_cli

    from napari_stpredict.inference.export import save_spot_table
    from napari_stpredict.inference.prediction import Prediction

    monkeypatch.setenv("STPREDICT_CACHE_DIR", str(tmp_path / "cache"))
    assert predict_cli(sample_slide_path, tiny_model_path, "--out", str(tmp_path / "o")) == 0
    folder = tmp_path / "o" / "her2st_C2"
    adata = ad.read_h5ad(folder / "prediction.h5ad")
    assert {"tumour_score", "tumour"} <= set(adata.obs.columns)
    mask = tifffile.imread(folder / "tumor_mask.tif")
    rows, cols = adata.obs["grid_row"].to_numpy(int), adata.obs["grid_col"].to_numpy(int)
    np.testing.assert_array_equal(adata.obs["tumour"].to_numpy(bool), mask[rows, cols] > 0)
    call = adata.uns["stpredict"]["tumour_call"]
    assert adata.obs["tumour"].any() == bool((adata.obs["tumour_score"] > call["threshold"]).any())
    table = pd.read_csv(save_spot_table(Prediction(adata), tmp_path / "spots.csv"))
    assert {"tumour_score", "tumour"} <= set(table.columns) and len(table) == adata.n_obs
