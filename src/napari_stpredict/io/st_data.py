"""Spatial transcriptomics data to AnnData, in scanpy/squidpy conventions.

Raw counts in ``X`` (sparse), gene names in ``var_names``, spot centres in image pixels
in ``obsm["spatial"]`` as ``(x, y)``, and ``uns["spatial"][library_id]`` with the image
reference, scale factors and mpp. ``obs`` holds ``patient`` and ``section`` ids and
labels where the data has them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import StPredictError

__all__ = ["read_her2st_section", "her2st_sections_with_images", "HER2ST_MPP"]

#: her2st full-resolution H&E: 290 px per 200 µm spot pitch (measured).
HER2ST_MPP = 0.688


class STDataError(StPredictError, ValueError):
    """An ST dataset is missing files or has inconsistent contents."""


def her2st_sections_with_images(root: str | Path) -> list[str]:
    """Sections of a her2st folder that have a full-resolution H&E image (e.g. B4, C2-C6)."""
    root = Path(root)
    return sorted(p.name for p in (root / "ST-imgs").glob("*/*") if any(p.glob("*.jpg")))


def _her2st_cluster_labels(root: Path, section: str):
    import pandas as pd

    path = root / "ST-cluster" / "lbl" / f"{section}-cluster-annotation.tsv.gz"
    names_path = root / "ST-cluster" / "motivation.csv"
    if not path.exists():
        return None
    clusters = pd.read_csv(path, sep="\t", index_col=0)
    names = _read_cluster_names(names_path) if names_path.exists() else {}
    clusters["array_key"] = clusters["x"].astype(int).astype(str) + "x" + clusters["y"].astype(int).astype(str)
    clusters = clusters.set_index("array_key")
    out = pd.DataFrame(index=clusters.index)
    out["cluster"] = clusters["label"].astype(int).astype(str)
    mapping = names.get(section[0], {})
    if mapping:
        out["cluster_name"] = out["cluster"].map(mapping).fillna("unknown")
    return out


def _read_cluster_names(path: Path) -> dict[str, dict[str, str]]:
    """Parse her2st ``motivation.csv``: {patient: {cluster: name}}.

    The file is not valid CSV (names such as "immune : B/plasma cells, APC" hold unquoted
    commas), so the name is everything between the cluster number and the field that
    starts the marker description.
    """
    names: dict[str, dict[str, str]] = {}
    lines = path.read_text(encoding="utf-8").splitlines()[1:]
    for line in lines:
        parts = line.split(",")
        if len(parts) < 3 or not parts[1].strip().isdigit():
            continue
        tokens = []
        for token in parts[2:]:
            if token.strip().lower().startswith("marker") or token.strip() == "":
                break
            tokens.append(token)
        names.setdefault(parts[0].strip(), {})[parts[1].strip()] = ",".join(tokens).strip()
    return names


def read_her2st_section(root: str | Path, section: str, *, with_image: bool = True):
    """Read one her2st section into AnnData.

    Parameters
    ----------
    root : str or Path
        The her2st folder (with ``ST-cnts``, ``ST-spotfiles``, ``ST-imgs`` ...).
    section : str
        Section id, e.g. ``"C2"``.
    with_image : bool
        Record the full-resolution H&E path in ``uns["spatial"]`` (error if missing).

    Returns
    -------
    anndata.AnnData
        Spots x genes raw counts; ``obs`` has ``array_x``, ``array_y``, ``patient``,
        ``section`` and, where available, ``cluster``/``cluster_name`` (expression
        clusters named by the authors) and ``label`` (pathologist annotation).
    """
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

    root = Path(root)
    counts_path = root / "ST-cnts" / f"{section}.tsv.gz"
    spots_path = root / "ST-spotfiles" / f"{section}_selection.tsv"
    for p in (counts_path, spots_path):
        if not p.exists():
            raise STDataError(f"her2st section {section!r}: missing file {p}")
    counts = pd.read_csv(counts_path, sep="\t", index_col=0)
    spots = pd.read_csv(spots_path, sep="\t")
    spots["array_key"] = spots["x"].astype(int).astype(str) + "x" + spots["y"].astype(int).astype(str)
    spots = spots.drop_duplicates("array_key").set_index("array_key")
    if "selected" in spots:
        spots = spots[spots["selected"] == 1]
    keys = [k for k in counts.index if k in spots.index]
    if not keys:
        raise STDataError(f"her2st section {section!r}: no spot of {counts_path.name} is in {spots_path.name}")
    counts = counts.loc[keys]
    spots = spots.loc[keys]

    obs = pd.DataFrame(index=[f"{section}_{k}" for k in keys])
    obs["array_x"] = spots["x"].astype(int).to_numpy()
    obs["array_y"] = spots["y"].astype(int).to_numpy()
    obs["patient"] = section[0]
    obs["section"] = section
    clusters = _her2st_cluster_labels(root, section)
    if clusters is not None:
        joined = clusters.reindex(keys)
        obs["cluster"] = joined["cluster"].fillna("NA").to_numpy()
        if "cluster_name" in joined:
            obs["cluster_name"] = joined["cluster_name"].fillna("unlabelled").to_numpy()
    x = sp.csr_matrix(counts.to_numpy(dtype=np.int32))
    var = pd.DataFrame(index=pd.Index(counts.columns.astype(str), name="gene_symbol"))
    adata = ad.AnnData(X=x, obs=obs, var=var)
    adata.var_names_make_unique()
    adata.obsm["spatial"] = spots[["pixel_x", "pixel_y"]].to_numpy(dtype=np.float64)

    library: dict = {
        "metadata": {"source": "her2st (Andersson et al., Nat Commun 12, 6012, 2021)", "section": section},
        "scalefactors": {
            "spot_diameter_fullres": 100.0 / HER2ST_MPP,
            "tissue_hires_scalef": 1.0,
            "mpp_fullres": HER2ST_MPP,
        },
    }
    if with_image:
        images = sorted((root / "ST-imgs").glob(f"{section[0]}/{section}/*.jpg"))
        if not images:
            raise STDataError(f"her2st section {section!r}: no H&E image under {root / 'ST-imgs'}")
        library["metadata"]["image_path"] = str(images[0])
    adata.uns["spatial"] = {section: library}
    return adata
