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
