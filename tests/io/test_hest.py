"""``stpredict convert hest`` (issue 21, item 3) on a HEST-1k layout built from real her2st
section C3: its counts as ``st/<id>.h5ad`` (spot centres in pixels of the image), its H&E
halved into a pyramidal ``wsis/<id>.tif``, the pixel size in ``metadata/<id>.json``; the
converted sample trains for a few steps, and every malformed sample is one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest


def _hest_sample(her2st_dir: Path, root: Path, sample_id: str = "HEST_C3") -> Path:
    """A HEST folder with one sample made from C3, its image at half resolution (1.376 µm/px)."""
    import tifffile
    from PIL import Image

    from napari_stpredict.io.st_data import HER2ST_MPP, read_her2st_section

    adata = read_her2st_section(her2st_dir, "C3", with_image=False)
    del adata.uns["spatial"]  # HEST's own uns differs; the converter writes the training layout
    xy = adata.obsm.pop("spatial") / 2
    adata.obs["pxl_col_in_fullres"], adata.obs["pxl_row_in_fullres"] = xy[:, 0], xy[:, 1]
    del adata.obs["patient"], adata.obs["section"]
    for sub in ("st", "wsis", "metadata"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    adata.write_h5ad(root / "st" / f"{sample_id}.h5ad")
    (image_path,) = sorted((her2st_dir / "ST-imgs" / "C" / "C3").glob("*.jpg"))
    with Image.open(image_path) as im:
        half = np.asarray(im.convert("RGB").reduce(2))
    with tifffile.TiffWriter(root / "wsis" / f"{sample_id}.tif") as tif:
        levels = [half, half[::2, ::2], half[::4, ::4]]
        tif.write(levels[0], tile=(256, 256), compression="jpeg", subifds=len(levels) - 1, photometric="rgb")
        for level in levels[1:]:
            tif.write(level, tile=(256, 256), compression="jpeg", subfiletype=1, photometric="rgb")
    meta = {"pixel_size_um_estimated": HER2ST_MPP * 2, "patient": "patient C", "organ": "Breast", "spot_diameter": 100}
    (root / "metadata" / f"{sample_id}.json").write_text(json.dumps(meta), encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def hest_dir(her2st_dir, tmp_path_factory) -> Path:
    return _hest_sample(her2st_dir, tmp_path_factory.mktemp("hest"))


@pytest.mark.slow
def test_a_hest_sample_converts_to_the_training_layout_and_trains(hest_dir, her2st_dir, tmp_path):
    import anndata as ad

    from napari_stpredict._progress import drain
    from napari_stpredict.cli import main
    from napari_stpredict.io.st_data import HER2ST_MPP
    from napari_stpredict.model import load_model
    from napari_stpredict.training.train import TrainConfig, iter_train

    out = tmp_path / "data"
    assert main(["convert", "hest", str(hest_dir), "--ids", "HEST_C3", "--out", str(out)]) == 0
    sample = ad.read_h5ad(out / "HEST_C3.h5ad")
    library = sample.uns["spatial"]["HEST_C3"]
    assert library["scalefactors"]["mpp_fullres"] == pytest.approx(HER2ST_MPP * 2)
    assert Path(library["metadata"]["image_path"]) == (hest_dir / "wsis" / "HEST_C3.tif").resolve()
    assert set(sample.obs["patient"]) == {"patient C"} and set(sample.obs["section"]) == {"HEST_C3"}
    assert sample.obsm["spatial"].shape == (sample.n_obs, 2)
    # the same conversion again does not replace it silently
    assert main(["convert", "hest", str(hest_dir), "--ids", "HEST_C3", "--out", str(out)]) == 2
    cfg = TrainConfig(
        train_sections=[str(out / "HEST_C3.h5ad")],
        her2st=None,
        benchmark_genes=None,
        genes=["ERBB2", "GRB7", "EPCAM", "CD24", "KRT19"],
        steps=2,
        batch_size=32,
        out_dir=str(tmp_path / "run"),
        cache_dir=str(tmp_path / "cache"),
    )
    checkpoint = drain(iter_train(cfg, tmp_path / "run"))
    model = load_model(checkpoint, device="cpu")
    assert model.genes == cfg.genes and model.provenance["train_sections"] == cfg.train_sections
    # patches were read from the half-resolution TIFF at its own pixel size: the same tissue
    # as the her2st image at full resolution (112 µm patches either way)
    from napari_stpredict.training.sections import section_spots

    hest = section_spots(str(out / "HEST_C3.h5ad"), None, cfg.genes, patch_um=112, input_px=32)
    native = section_spots("C3", str(her2st_dir), cfg.genes, patch_um=112, input_px=32, cache_dir=tmp_path / "c")
    assert len(hest) == len(native)
    difference = np.abs(hest.patches.astype(float) - native.patches.astype(float)).mean()
    assert difference < 20, difference  # JPEG and resampling (measured 10.9), not other tissue (shifted: 51.8)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("no_metadata", "missing file"),
        ("no_image", "(the whole-slide image)"),
        ("no_pixel_size", "no plausible pixel size"),
        ("bad_json", "not a readable JSON file"),
        ("truncated_st", "not a readable .h5ad file"),
        ("no_coordinates", "no spot coordinates"),
    ],
)
def test_malformed_hest_samples_fail_in_one_line_naming_the_file(hest_dir, tmp_path, capsys, damage, message):
    import shutil

    import anndata as ad

    from napari_stpredict.cli import main

    root = tmp_path / "hest"
    shutil.copytree(hest_dir, root)
    st, meta, wsi = root / "st" / "HEST_C3.h5ad", root / "metadata" / "HEST_C3.json", root / "wsis" / "HEST_C3.tif"
    if damage == "no_metadata":
        meta.unlink()
    elif damage == "no_image":
        wsi.unlink()
    elif damage == "no_pixel_size":
        meta.write_text(json.dumps({"pixel_size_um_estimated": None, "patient": "x"}), encoding="utf-8")
    elif damage == "bad_json":
        meta.write_text("{not json", encoding="utf-8")
    elif damage == "truncated_st":
        st.write_bytes(st.read_bytes()[:2000])
    elif damage == "no_coordinates":
        adata = ad.read_h5ad(st)
        del adata.obs["pxl_col_in_fullres"]
        adata.write_h5ad(st)
    assert main(["convert", "hest", str(root), "--ids", "HEST_C3", "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert message in err and "HEST_C3" in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert not list((tmp_path / "out").glob("*.h5ad"))


def test_hest_options_are_checked_before_any_work(tmp_path, capsys):
    from napari_stpredict.cli import main

    assert main(["convert", "hest", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "needs --ids" in capsys.readouterr().err
    assert main(["convert", "hest", str(tmp_path), "--ids", "X", "--out", str(tmp_path / "o")]) == 2
    assert "not a HEST folder" in capsys.readouterr().err
    assert main(["convert", "visium", str(tmp_path), "--ids", "X", "--out", str(tmp_path / "o")]) == 2
    assert "--ids is for hest" in capsys.readouterr().err
