"""PredictionMeta: typed metadata, its round trip through uns/.h5ad, and files of 0.1.0."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_stpredict.inference import Prediction
from napari_stpredict.inference.meta import SCHEMA, PredictionMeta
from napari_stpredict.inference.tumor import tumor_mask

FIXTURE = Path(__file__).resolve().parents[1] / "data" / "prediction_0.1.0.h5ad"


def test_a_file_written_by_0_1_0_loads_with_every_field():
    """tests/data/prediction_0.1.0.h5ad: a region of the sample predicted by the bundled
    model with version 0.1.0 (before the schema key), 7 marker genes kept."""
    prediction = Prediction.load(FIXTURE)
    meta = prediction.meta
    assert "schema" not in prediction.adata.uns["stpredict"]
    assert meta.model.name == "cmrcnet_her2st.pt" and meta.model.top_k == 100
    assert meta.slide.name == "her2st_C2.tiff" and meta.slide.dimensions[0] > 0
    assert meta.mpp_x == pytest.approx(0.688, abs=1e-3) and meta.patch_um == 112.0
    assert meta.grid.shape == tuple(prediction.adata.uns["stpredict"]["grid_shape"])
    assert meta.trust.domain.verdict in ("in domain", "partly out of domain", "out of domain")
    assert meta.tumour_calibration is not None and meta.tumour_calibration.threshold is not None
    assert meta.tumour_call is not None and meta.tumour_call["mode"] == "absolute"
    # what it holds still draws and calls as before: the stored call is reproduced
    mask = tumor_mask(prediction)
    assert mask.threshold == pytest.approx(meta.tumour_call["threshold"])
    stored = prediction.adata.obs["tumour_score"].to_numpy()
    np.testing.assert_allclose(mask.score, stored, atol=1e-5)
    assert np.isfinite(prediction.heatmap("erbb2").raster).sum() == len(prediction)


def test_round_trip_through_uns_and_h5ad(tmp_path):
    prediction = Prediction.load(FIXTURE)
    meta = prediction.meta
    again = PredictionMeta.from_uns(meta.to_uns())
    assert again == meta
    assert meta.to_uns()["schema"] == SCHEMA
    # every key 0.1.0 wrote is still written, with the same values
    old = prediction.adata.uns["stpredict"]
    new = meta.to_uns()
    for key in old:
        assert key in new, key
    assert new["trust"] == old["trust"] and new["model"]["markers"] == old["model"]["markers"]
    prediction.set_meta(meta.with_slide_name("renamed").with_changes(cache="hit"))
    prediction.save(tmp_path / "p.h5ad")
    back = Prediction.load(tmp_path / "p.h5ad")
    assert back.meta == prediction.meta and back.meta.slide.name == "renamed" and back.meta.cache == "hit"


def test_frozen_and_damaged_metadata_named(tmp_path):
    import anndata as ad

    prediction = Prediction.load(FIXTURE)
    with pytest.raises(AttributeError):
        prediction.meta.stride_um = 1.0  # type: ignore[misc]
    adata = ad.read_h5ad(FIXTURE)
    del adata.uns["stpredict"]["grid_shape"]
    adata.write_h5ad(tmp_path / "broken.h5ad")
    with pytest.raises(ValueError, match=r"broken\.h5ad.*grid_shape"):
        Prediction.load(tmp_path / "broken.h5ad")


def test_metadata_string_keys_are_read_in_the_metadata_module_only():
    """Outside inference/meta.py (and grid.py's to/from_meta) no module reads the stored
    metadata by key: ``meta[...]``, ``meta.get(...)`` or ``uns["stpredict"]``."""
    import re

    package = Path(__file__).resolve().parents[2] / "src" / "napari_stpredict"
    pattern = re.compile(r'prediction\.meta\[|prediction\.meta\.get\(|\.meta\["|uns\["stpredict"\]')
    allowed = {"inference/meta.py", "grid.py", "inference/prediction.py", "inference/assemble.py"}
    found = []
    for path in package.rglob("*.py"):
        rel = path.relative_to(package).as_posix()
        if rel in allowed:
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if pattern.search(line):
                found.append(f"{rel}:{number}: {line.strip()}")
    assert not found, "\n".join(found)
