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

__all__ = [
    "read_her2st_section",
    "her2st_sections_with_images",
    "her2st_sections",
    "read_visium",
    "read_st_h5ad",
    "match_genes",
    "STDataError",
    "HER2ST_MPP",
    "VISIUM_SPOT_UM",
]

#: her2st full-resolution H&E: 290 px per 200 µm spot pitch (measured).
HER2ST_MPP = 0.688
#: Visium spot diameter; with Space Ranger's ``spot_diameter_fullres`` it gives the mpp.
VISIUM_SPOT_UM = 55.0


class STDataError(StPredictError, ValueError):
    """An ST dataset is missing files or has inconsistent contents."""


def her2st_sections(root: str | Path) -> list[str]:
    """All her2st sections that have counts (e.g. A1 ... H3)."""
    return sorted(p.name.split(".")[0] for p in (Path(root) / "ST-cnts").glob("*.tsv.gz"))


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
        library["metadata"]["image_path"] = str(her2st_image(root, section))
    adata.uns["spatial"] = {section: library}
    return adata


def visium_sample_name(folder: str | Path) -> str:
    """The sample's name for a Space Ranger folder: the folder's own name, or for Space
    Ranger's ``<sample>/outs`` layout the sample folder's (every sample's output folder is
    called ``outs``)."""
    folder = Path(folder).resolve()
    if folder.name.lower() == "outs" and folder.parent.name:
        return folder.parent.name
    return folder.name


def read_visium(
    folder: str | Path,
    *,
    library_id: str | None = None,
    patient: str | None = None,
    fullres_image: str | Path | None = None,
):
    """Read a Space Ranger output folder into AnnData.

    Parameters
    ----------
    folder : str or Path
        Folder with ``filtered_feature_bc_matrix.h5`` and ``spatial/`` (tissue positions,
        ``scalefactors_json.json``, hires/lowres images).
    library_id : str, optional
        Name of the library in ``uns["spatial"]`` and the section name; default:
        `visium_sample_name` (``<sample>/outs`` gives ``<sample>``).
    patient : str, optional
        The patient the section comes from (training splits by it); default: the
        library id.
    fullres_image : str or Path, optional
        The full-resolution H&E the spot pixel coordinates refer to (Space Ranger does
        not copy it into its output). Recorded in ``uns``; needed for training.

    Returns
    -------
    anndata.AnnData
        Spots under tissue x genes, raw counts; ``var_names`` are gene symbols and
        ``var["gene_ids"]`` Ensembl IDs; ``obsm["spatial"]`` is full-resolution ``(x, y)``.

    Raises
    ------
    STDataError
        Naming the file: a missing, truncated or malformed matrix, positions table or
        scale factors file, or an image that is not a readable PNG of sane size.
    """
    import json

    import anndata as ad
    import pandas as pd

    folder = Path(folder)
    h5 = folder / "filtered_feature_bc_matrix.h5"
    spatial = folder / "spatial"
    if not h5.exists():
        raise STDataError(f"{folder}: no filtered_feature_bc_matrix.h5; is this a Space Ranger output folder?")
    x, barcodes, gene_ids, names = _read_10x_matrix(h5)
    positions_path = next(
        (p for p in (spatial / "tissue_positions.csv", spatial / "tissue_positions_list.csv") if p.exists()), None
    )
    if positions_path is None:
        raise STDataError(f"{folder}: no spatial/tissue_positions.csv or tissue_positions_list.csv")
    cols = ["barcode", "in_tissue", "array_row", "array_col", "pxl_row_in_fullres", "pxl_col_in_fullres"]
    try:
        with positions_path.open(encoding="utf-8") as fh:
            first = fh.readline()
        positions = pd.read_csv(positions_path, header=0 if first.startswith("barcode") else None, encoding="utf-8")
        positions.columns = cols
        positions[cols[1:]] = positions[cols[1:]].astype(np.float64)
        if not np.isfinite(positions[cols[1:]].to_numpy()).all():
            raise ValueError("empty or non-numeric cells")
    except (OSError, UnicodeDecodeError, ValueError, pd.errors.ParserError) as exc:
        raise STDataError(
            f"{positions_path}: not a Space Ranger positions table ({' '.join(str(exc).split())[:200]}); "
            f"expected the columns {', '.join(cols)}"
        ) from exc
    positions = positions.set_index("barcode")
    missing = [b for b in barcodes if b not in positions.index]
    if missing:
        raise STDataError(
            f"{positions_path}: {len(missing)} barcodes of the matrix have no position, e.g. {missing[0]}"
        )
    positions = positions.loc[barcodes]
    scalefactors_path = spatial / "scalefactors_json.json"
    try:
        scalefactors = json.loads(scalefactors_path.read_text(encoding="utf-8"))
        spot_px = float(scalefactors["spot_diameter_fullres"])
    except FileNotFoundError as exc:
        raise STDataError(f"{scalefactors_path}: missing (Space Ranger writes it beside the positions)") from exc
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise STDataError(f"{scalefactors_path}: no usable 'spot_diameter_fullres' ({exc!r})") from exc
    if not (np.isfinite(spot_px) and spot_px > 0):
        raise STDataError(f"{scalefactors_path}: 'spot_diameter_fullres' must be a positive number, got {spot_px}")
    library_id = library_id or visium_sample_name(folder)

    obs = positions[["in_tissue", "array_row", "array_col"]].astype(np.int64)
    obs.index.name = None
    obs["patient"] = patient or library_id
    obs["section"] = library_id
    var = pd.DataFrame({"gene_ids": gene_ids}, index=pd.Index(names))
    adata = ad.AnnData(X=x.astype(np.int32), obs=obs, var=var)
    adata.var_names_make_unique()
    adata.obsm["spatial"] = positions[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(np.float64)
    images = {}
    for kind in ("hires", "lowres"):
        path = spatial / f"tissue_{kind}_image.png"
        if path.exists():
            images[kind] = _read_small_image(path)
    scalefactors["mpp_fullres"] = VISIUM_SPOT_UM / spot_px
    metadata: dict = {"source": str(folder.name)}
    if fullres_image is not None:
        metadata["image_path"] = str(fullres_image)
    adata.uns["spatial"] = {library_id: {"images": images, "scalefactors": scalefactors, "metadata": metadata}}
    return adata[adata.obs["in_tissue"] == 1].copy() if (adata.obs["in_tissue"] == 1).any() else adata


def _read_10x_matrix(h5: Path):
    """Counts (spots x genes, CSR), barcodes, gene ids and names of a 10x matrix file."""
    import h5py
    import scipy.sparse as sp

    try:
        with h5py.File(h5, "r") as f:
            m = f["matrix"]
            n_genes, n_spots = (int(v) for v in m["shape"][:])
            x = sp.csc_matrix((m["data"][:], m["indices"][:], m["indptr"][:]), shape=(n_genes, n_spots)).T.tocsr()
            barcodes = [b.decode() for b in m["barcodes"][:]]
            gene_ids = [g.decode() for g in m["features/id"][:]]
            names = [g.decode() for g in m["features/name"][:]]
    except (OSError, KeyError, ValueError, TypeError, UnicodeDecodeError) as exc:
        raise STDataError(
            f"{h5}: not a readable 10x feature-barcode matrix ({' '.join(str(exc).split())[:200]}); "
            "is it truncated or from another tool?"
        ) from exc
    return x, barcodes, gene_ids, names


# Space Ranger's hires image is at most 2,000 px a side; allow generous margins, refuse
# decompression bombs before decoding.
_MAX_IMAGE_PIXELS = 10_000 * 10_000


def _read_small_image(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as image:
            if image.width * image.height > _MAX_IMAGE_PIXELS:
                raise STDataError(
                    f"{path}: far larger than a Space Ranger hires/lowres image ({image.width} x "
                    f"{image.height} px); refused (a decompression bomb?)"
                )
            return np.asarray(image.convert("RGB"))
    except STDataError:
        raise
    except Image.DecompressionBombError as exc:  # Pillow's own limit, met before ours
        raise STDataError(
            f"{path}: far larger than a Space Ranger hires/lowres image; refused (a decompression bomb?)"
        ) from exc
    except (OSError, ValueError) as exc:
        raise STDataError(f"{path}: not a readable image ({exc})") from exc


def her2st_image(root: str | Path, section: str) -> Path:
    """The full-resolution H&E image of a her2st section (``ST-imgs/<patient>/<section>/*.jpg``).

    Raises
    ------
    STDataError
        When the folder holds no image for the section (only B4 and C2-C6 have one here).
    """
    images = sorted((Path(root) / "ST-imgs").glob(f"{section[:1]}/{section}/*.jpg"))
    if not images:
        raise STDataError(f"her2st section {section!r}: no H&E image under {Path(root) / 'ST-imgs'}")
    return images[0]


def read_st_h5ad(path: str | Path):
    """Read an ``.h5ad`` in the scanpy/squidpy layout and check it has what training needs.

    Requires ``obsm["spatial"]`` and ``uns["spatial"][library]["scalefactors"]``; adds
    ``obs["patient"]``/``obs["section"]`` (the library id) when absent.
    """
    import anndata as ad

    path = Path(path)
    adata = ad.read_h5ad(path)
    if "spatial" not in adata.obsm:
        raise STDataError(f"{path}: no obsm['spatial'] spot coordinates")
    libraries = list(adata.uns.get("spatial", {}))
    if not libraries:
        raise STDataError(f"{path}: no uns['spatial'] library (image and scale factors)")
    for column in ("patient", "section"):
        if column not in adata.obs:
            adata.obs[column] = libraries[0]
    return adata


def match_genes(var, requested, *, gene_ids_column: str = "gene_ids"):
    """Find requested genes in a gene table, by symbol (case-insensitive) or Ensembl ID.

    Parameters
    ----------
    var : pandas.DataFrame
        ``adata.var``: the index holds symbols; ``gene_ids_column`` (if present) holds
        Ensembl IDs.
    requested : sequence of str
        Symbols (``erbb2``, ``ERBB2``) or Ensembl IDs (``ENSG00000141736``, version
        suffixes ignored).

    Returns
    -------
    indices : list of int
        Positions in ``var`` of the genes found, in the requested order.
    found : list of str
        The symbols in ``var`` that were matched.
    missing : list of str
        Requested names not found (reported, never dropped silently).
    """
    symbols = {str(s).upper(): i for i, s in enumerate(var.index)}
    ids = {}
    if gene_ids_column in var:
        ids = {str(g).split(".")[0].upper(): i for i, g in enumerate(var[gene_ids_column])}
    indices, found, missing = [], [], []
    for name in requested:
        key = str(name).strip().upper()
        idx = ids.get(key.split(".")[0]) if key.startswith("ENS") else None
        if idx is None:
            idx = symbols.get(key)
        if idx is None:
            missing.append(str(name))
        elif idx not in indices:
            indices.append(idx)
            found.append(str(var.index[idx]))
    return indices, found, missing
