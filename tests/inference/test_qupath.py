"""QuPath detections: the file parsed back as QuPath's reader would, checked against the
prediction (one feature per spot, squares centred on the spots, measurements, tumour class)."""

from __future__ import annotations

import json
import uuid

import numpy as np
import pytest
from conftest import predict_cli


@pytest.fixture
def exported(sample_slide_path, tiny_model_path, tmp_path, monkeypatch):
    monkeypatch.setenv("STPREDICT_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "out"
    rc = predict_cli(
        sample_slide_path, tiny_model_path, "--out", str(out), "--genes", "ERBB2", "GRB7", "--export", "qupath"
    )
    assert rc == 0
    return out / "her2st_C2"


def test_one_detection_per_spot_with_the_predictions_values(exported):
    from napari_stpredict.inference.prediction import Prediction

    data = json.loads((exported / "qupath_detections.geojson").read_text(encoding="utf-8"))
    prediction = Prediction.load(exported / "prediction.h5ad")
    obs = prediction.adata.obs
    features = data["features"]
    assert data["type"] == "FeatureCollection" and len(features) == len(obs)
    assert "Research use only" in data["properties"]["note"]
    ids = [f["id"] for f in features]
    assert len(set(ids)) == len(ids) and all(uuid.UUID(i) for i in ids)  # QuPath 0.4+ keeps UUID ids
    stride = np.asarray(prediction.grid.stride, float)
    centres = np.asarray(prediction.adata.obsm["spatial"], float)
    erbb2, grb7 = prediction.expression("ERBB2"), prediction.expression("GRB7")
    for i, feature in enumerate(features):
        props = feature["properties"]
        assert props["objectType"] == "detection" and props["isLocked"] is True
        ring = np.asarray(feature["geometry"]["coordinates"][0])
        assert feature["geometry"]["type"] == "Polygon" and len(ring) == 5 and np.allclose(ring[0], ring[-1])
        assert np.allclose(ring[:4].mean(0), centres[i], atol=0.5)  # centred on the spot, to the pixel
        assert np.allclose(ring[:4].max(0) - ring[:4].min(0), stride, atol=0.02)  # the grid cell
        m = props["measurements"]
        assert m["ERBB2"] == pytest.approx(erbb2[i], abs=1e-4) and m["GRB7"] == pytest.approx(grb7[i], abs=1e-4)
        assert m["Confidence"] == pytest.approx(obs["confidence"].iloc[i], abs=1e-4)
        assert m["Tumour score"] == pytest.approx(obs["tumour_score"].iloc[i], abs=1e-4)
        assert m["Out of domain"] == float(obs["out_of_domain"].iloc[i])
        called = props.get("classification", {}).get("name") == "Tumor"
        assert called == bool(obs["tumour"].iloc[i])
    assert any("classification" in f["properties"] for f in features)  # the sample has tumour


@pytest.mark.slow
def test_export_options_are_checked_and_all_genes_can_be_written(sample_slide_path, tiny_model_path, tmp_path):
    from napari_stpredict.inference.job import PredictOptions
    from napari_stpredict.model import open_model

    model = open_model(tiny_model_path, device="cpu")
    assert any("--export" in p for p in PredictOptions(exports=("qupat",)).problems(model))
    assert any("--export-genes" in p for p in PredictOptions(export_genes="some").problems(model))
    # fingerprints of runs without the option stay as they were
    assert "exports" not in PredictOptions().result_settings()
    assert PredictOptions(exports=("qupath",)).result_settings()["exports"] == ["qupath"]
    out = tmp_path / "all"
    assert (
        predict_cli(
            sample_slide_path, tiny_model_path, "--out", str(out), "--export", "qupath", "--export-genes", "all"
        )
        == 0
    )
    first = json.loads((out / "her2st_C2" / "qupath_detections.geojson").read_text(encoding="utf-8"))["features"][0]
    assert set(model.genes) <= set(first["properties"]["measurements"])
