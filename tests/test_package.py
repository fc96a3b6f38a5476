"""Packaging: the import stays light, the manifest validates, package data ships."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import napari_stpredict

REPO = Path(__file__).resolve().parents[1]


def test_import_leaves_torch_and_qt_out():
    code = (
        "import sys, napari_stpredict; "
        "print([m for m in ('torch', 'torchvision', 'timm', 'qtpy', 'PyQt6', 'napari') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_npe2_validates_the_installed_manifest():
    out = subprocess.run([sys.executable, "-m", "npe2", "validate", "napari-stpredict"], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "valid" in (out.stdout + out.stderr)


def test_manifest_in_package_is_the_top_level_one():
    from importlib.resources import files

    shipped = files("napari_stpredict").joinpath("napari.yaml").read_text(encoding="utf-8")
    assert shipped == (REPO / "napari.yaml").read_text(encoding="utf-8")


def test_manifest_contributions_resolve():
    from npe2 import PluginManager

    pm = PluginManager()
    pm.discover()
    manifest = pm.get_manifest("napari-stpredict")
    for command in manifest.contributions.commands:
        assert command.exec is not None or command.python_name
        module, _, attr = command.python_name.partition(":")
        __import__(module)
        assert callable(getattr(sys.modules[module], attr))
    assert [s.key for s in manifest.contributions.sample_data] == ["her2st_c2"]


def test_sample_data_ships_inside_the_installed_package(sample_slide_path, sample_spots_path):
    package_dir = Path(napari_stpredict.__file__).resolve().parent
    if os.environ.get("STPREDICT_TESTING_WHEEL"):
        # scripts/test.sh installs the built wheel: the data must be inside the package.
        assert sample_slide_path.parent == package_dir / "sample_data"
        assert "site-packages" in str(package_dir)
        assert (package_dir / "napari.yaml").exists()
    assert (package_dir / "py.typed").exists()  # PEP 561: type checkers read the package's hints
    total = sum(p.stat().st_size for p in sample_slide_path.parent.iterdir())
    assert total <= 15 * 1024 * 1024
    assert (sample_slide_path.parent / "ATTRIBUTION.md").exists()


def test_sample_spots_table(sample_spots_path, sample_slide_path):
    import anndata as ad
    import numpy as np

    from napari_stpredict.io.slide import open_slide
    from napari_stpredict.tissue import slide_tissue_mask

    adata = ad.read_h5ad(sample_spots_path)
    assert adata.n_obs == 187 and adata.n_vars == 15706
    assert set(adata.obs["section"]) == {"C2"} and set(adata.obs["patient"]) == {"C"}
    assert "ERBB2" in adata.var_names
    assert adata.X.dtype.kind in "iu" and adata.X.sum() > 1_000_000  # raw counts
    with open_slide(sample_slide_path) as slide:
        xy = adata.obsm["spatial"]
        w, h = slide.dimensions
        assert (xy[:, 0] > 0).all() and (xy[:, 0] < w).all() and (xy[:, 1] > 0).all() and (xy[:, 1] < h).all()
        assert slide_tissue_mask(slide).contains(xy).mean() >= 0.95
    # The ST v1 array pitch is 200 µm: pixels per array step times 0.688 µm/px.
    for column, axis in (("array_x", 0), ("array_y", 1)):
        px_per_step = np.polyfit(adata.obs[column].to_numpy(), xy[:, axis], 1)[0]
        assert px_per_step * 0.688 == pytest.approx(200, rel=0.02)


def test_sample_matches_the_original_her2st_image(her2st_dir, sample_slide_path):
    """The sample is the C2 image re-encoded, not recoloured or shifted (crop from x 1200, y 2600)."""
    import numpy as np
    from PIL import Image

    from napari_stpredict.io.slide import open_slide

    Image.MAX_IMAGE_PIXELS = None
    original = Image.open(next((her2st_dir / "ST-imgs" / "C" / "C2").glob("*.jpg")))
    ref = np.asarray(original.crop((1200 + 3000, 2600 + 2500, 1200 + 3512, 2600 + 3012)).convert("RGB"))
    with open_slide(sample_slide_path) as slide:
        got = slide.read_region((3000, 2500), 0, (512, 512))
    assert np.abs(got.astype(float) - ref.astype(float)).mean() < 4.0


def test_cli_info_on_sample_and_bad_slide(tmp_path, capsys):
    from napari_stpredict.cli import main

    bad = tmp_path / "bad.svs"
    bad.write_text("nope")
    rc = main(["info", "--sample", str(bad), "--out", str(tmp_path / "out")])
    assert rc == 1  # the bad slide fails ...
    err = capsys.readouterr().err
    assert "bad.svs" in err
    summary = json.loads((tmp_path / "out" / "her2st_C2_summary.json").read_text())  # ... the sample still completes
    assert summary["dimensions"] == [7400, 6300] and summary["mpp_x"] == pytest.approx(0.688)
    assert 0.2 < summary["tissue_fraction"] < 0.6
    from PIL import Image

    thumb = Image.open(tmp_path / "out" / "her2st_C2_thumbnail.png")
    assert max(thumb.size) == 1024
    assert not list((tmp_path / "out").glob("*.part"))  # atomic writes leave no temp files


def test_cli_entry_point_is_installed():
    out = subprocess.run([sys.executable, "-m", "napari_stpredict.cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and napari_stpredict.__version__ in out.stdout
