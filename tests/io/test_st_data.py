"""ST data conversion: her2st and Space Ranger layouts, gene matching, the convert CLI."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from napari_stpredict.io.st_data import (
    HER2ST_MPP,
    STDataError,
    her2st_sections,
    match_genes,
    read_her2st_section,
    read_st_h5ad,
    read_visium,
)


@pytest.mark.parametrize("section,n_spots,n_genes", [("C2", 187, 15706), ("B4", 283, 15289)])
def test_her2st_section(her2st_dir, section, n_spots, n_genes):
    a = read_her2st_section(her2st_dir, section)
    assert a.shape == (n_spots, n_genes)
    assert a.X.format == "csr" and a.X.dtype == np.int32
    assert a.obsm["spatial"].shape == (n_spots, 2)
    assert set(a.obs["patient"]) == {section[0]} and set(a.obs["section"]) == {section}
    lib = a.uns["spatial"][section]
    assert lib["scalefactors"]["mpp_fullres"] == HER2ST_MPP
    assert lib["metadata"]["image_path"].endswith(".jpg")
    assert "cancer 1" in set(a.obs["cluster_name"]) or "cancer" in set(a.obs["cluster_name"])
    # counts match the raw table for one spot
    raw = pd.read_csv(her2st_dir / "ST-cnts" / f"{section}.tsv.gz", sep="\t", index_col=0)
    key = f"{a.obs['array_x'].iloc[0]}x{a.obs['array_y'].iloc[0]}"
    gene = "ERBB2"
    assert a[a.obs_names[0], gene].X.toarray().item() == raw.loc[key, gene]


def test_her2st_has_36_sections(her2st_dir):
    assert len(her2st_sections(her2st_dir)) == 36


def test_missing_her2st_section_is_a_clear_error(her2st_dir):
    with pytest.raises(STDataError, match="Z9"):
        read_her2st_section(her2st_dir, "Z9")


def test_visium_folder():
    from conftest import SHARED_DATA, _require

    folder = _require(SHARED_DATA / "visium" / "human_heart_v1_subset")
    a = read_visium(folder)
    assert a.shape == (100, 100)
    assert "gene_ids" in a.var and a.var["gene_ids"].iloc[0].startswith("ENSG")
    lib = a.uns["spatial"]["human_heart_v1_subset"]
    assert lib["scalefactors"]["mpp_fullres"] == pytest.approx(55 / 89.4275, rel=1e-4)
    assert lib["images"]["lowres"].ndim == 3
    xy = a.obsm["spatial"]
    assert xy[:, 0].min() > 0 and xy[:, 1].min() > 0


def test_squidpy_h5ad():
    from conftest import SHARED_DATA, _require

    path = _require(SHARED_DATA / "visium" / "mouse_brain_subset" / "test_data.h5ad")
    a = read_st_h5ad(path)
    assert a.shape == (49, 1999) and set(a.obs["section"]) == {"V1_Adult_Mouse_Brain"}


def test_missing_spaceranger_matrix(tmp_path):
    with pytest.raises(STDataError, match="filtered_feature_bc_matrix.h5"):
        read_visium(tmp_path)


def test_match_genes_case_insensitive_ensembl_and_missing():
    var = pd.DataFrame({"gene_ids": ["ENSG01.3", "ENSG02", "ENSG03"]}, index=["ERBB2", "GRB7", "Actb"])
    idx, found, missing = match_genes(var, ["erbb2", "ENSG02.7", "ACTB", "NOPE", "ERBB2"])
    assert idx == [0, 1, 2] and found == ["ERBB2", "GRB7", "Actb"] and missing == ["NOPE"]


def test_convert_cli(her2st_dir, tmp_path, capsys):
    import anndata as ad

    from napari_stpredict.cli import main

    assert (
        main(
            [
                "convert",
                "her2st",
                str(her2st_dir),
                "--sections",
                "C3",
                "--genes",
                "erbb2",
                "GRB7",
                "XYZ1",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    assert "XYZ1" in capsys.readouterr().err
    a = ad.read_h5ad(tmp_path / "C3.h5ad")
    assert list(a.var_names) == ["ERBB2", "GRB7"] and a.n_obs > 150


# --- issue 24.5: convert visium on Space Ranger's own layout and on malformed folders ----------
def _spaceranger_sample(root, name):
    import shutil

    from conftest import SHARED_DATA, _require

    outs = root / name / "outs"
    shutil.copytree(_require(SHARED_DATA / "visium" / "human_heart_v1_subset"), outs)
    return outs


def test_convert_visium_names_samples_from_the_sample_folder(tmp_path, capsys, monkeypatch):
    import anndata as ad

    from napari_stpredict.cli import main

    a, b = _spaceranger_sample(tmp_path, "patient7_A"), _spaceranger_sample(tmp_path, "patient7_B")
    out = tmp_path / "h5ad"
    assert main(["convert", "visium", str(a), "--out", str(out)]) == 0
    assert main(["convert", "visium", str(b), "--out", str(out), "--patient", "patient7"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["patient7_A.h5ad", "patient7_B.h5ad"]
    first = ad.read_h5ad(out / "patient7_A.h5ad")
    second = ad.read_h5ad(out / "patient7_B.h5ad")
    assert set(first.obs["section"]) == {"patient7_A"} and set(first.obs["patient"]) == {"patient7_A"}
    assert set(second.obs["section"]) == {"patient7_B"} and set(second.obs["patient"]) == {"patient7"}
    assert list(second.uns["spatial"]) == ["patient7_B"]
    # the same conversion again does not silently replace the first
    before = (out / "patient7_A.h5ad").read_bytes()
    assert main(["convert", "visium", str(a), "--out", str(out)]) == 2
    assert "patient7_A.h5ad: exists already; pass --overwrite" in capsys.readouterr().err
    assert (out / "patient7_A.h5ad").read_bytes() == before
    assert main(["convert", "visium", str(a), "--out", str(out), "--overwrite", "--id", "renamed"]) == 0
    assert (out / "renamed.h5ad").exists()
    # from inside the folder: "." is named like the folder, not a hidden ".h5ad"
    monkeypatch.chdir(b)
    assert main(["convert", "visium", ".", "--out", str(tmp_path / "dot")]) == 0
    assert [p.name for p in (tmp_path / "dot").iterdir()] == ["patient7_B.h5ad"]


def _break(outs, damage):
    spatial = outs / "spatial"
    if damage == "no_scalefactors":
        (spatial / "scalefactors_json.json").unlink()
        return "scalefactors_json.json: missing"
    if damage == "zero_spot":
        (spatial / "scalefactors_json.json").write_text('{"spot_diameter_fullres": 0}', encoding="utf-8")
        return "'spot_diameter_fullres' must be a positive number"
    if damage == "truncated_h5":
        h5 = outs / "filtered_feature_bc_matrix.h5"
        h5.write_bytes(h5.read_bytes()[:2000])
        return "filtered_feature_bc_matrix.h5: not a readable 10x feature-barcode matrix"
    if damage == "non_utf8_positions":
        positions = next(spatial.glob("tissue_positions*.csv"))
        positions.write_bytes(positions.read_bytes() + b"\xff\xfe,1,2,3,4,5\n")
        return f"{positions.name}: not a Space Ranger positions table"
    if damage == "bomb_png":
        import struct
        import zlib

        def chunk(kind, data):
            return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

        header = struct.pack(">IIBBBBB", 200_000, 200_000, 8, 2, 0, 0, 0)
        png = (
            b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\0" * 1000))
            + chunk(b"IEND", b"")
        )
        (spatial / "tissue_lowres_image.png").write_bytes(png)
        return "tissue_lowres_image.png: far larger than a Space Ranger"
    raise AssertionError(damage)


@pytest.mark.parametrize("damage", ["no_scalefactors", "zero_spot", "truncated_h5", "non_utf8_positions", "bomb_png"])
def test_malformed_spaceranger_folders_fail_in_one_line_naming_the_file(damage, tmp_path, capsys):
    from napari_stpredict.cli import main

    outs = _spaceranger_sample(tmp_path, "s")
    expected = _break(outs, damage)
    assert main(["convert", "visium", str(outs), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip()
    assert expected in err and len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    assert not list((tmp_path / "out").glob("*.h5ad"))
