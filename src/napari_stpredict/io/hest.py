"""HEST-1k samples (Jaume et al. 2024) as training data: ``stpredict convert hest``.

HEST keeps each sample as ``st/<id>.h5ad`` (scanpy AnnData: raw counts, spot centres in
full-resolution pixels in ``obsm["spatial"]`` or ``obs`` ``pxl_col_in_fullres`` /
``pxl_row_in_fullres``), ``wsis/<id>.tif`` (pyramidal TIFF) and ``metadata/<id>.json``
(``pixel_size_um_estimated``, patient, organ, technology). `read_hest_sample` returns the
scanpy/squidpy layout `stpredict train` reads: the image path and its µm per pixel in
``uns["spatial"]``, ``obs["patient"]`` and ``obs["section"]`` for patient-level splits.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .resolution import plausible_mpp
from .st_data import STDataError

__all__ = ["read_hest_sample"]

#: HEST's metadata keys for the image's resolution, the measured one first.
MPP_KEYS = ("pixel_size_um_estimated", "pixel_size_um_embedded")


def read_hest_sample(hest_dir: str | Path, sample_id: str, *, patient: str | None = None):
    """One HEST-1k sample in the training layout.

    Parameters
    ----------
    hest_dir : str or Path
        The HEST folder (with ``st/``, ``wsis/``, ``metadata/``).
    sample_id : str
        The sample's id (``TENX95``, ``NCBI785``, ...).
    patient : str, optional
        The patient (training splits by it); default: the metadata's ``patient``, else the id.

    Raises
    ------
    STDataError
        One line naming the file: missing, unreadable, without a plausible pixel size,
        without spot coordinates, or without spots.
    """
    import anndata as ad

    root = Path(hest_dir)
    st = root / "st" / f"{sample_id}.h5ad"
    meta_path = root / "metadata" / f"{sample_id}.json"
    images = [root / "wsis" / f"{sample_id}{ext}" for ext in (".tif", ".tiff", ".svs", ".ome.tif")]
    image = next((p for p in images if p.is_file()), None)
    for path in (st, meta_path):
        if not path.is_file():
            raise STDataError(f"HEST sample {sample_id!r}: missing file {path}")
    if image is None:
        raise STDataError(f"HEST sample {sample_id!r}: missing file {images[0]} (the whole-slide image)")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise STDataError(f"{meta_path}: not a readable JSON file ({exc})") from exc
    if not isinstance(meta, dict):
        raise STDataError(f"{meta_path}: expected a JSON object of sample metadata")
    mpp = next((m for m in (plausible_mpp(meta.get(key)) for key in MPP_KEYS) if m is not None), None)
    if mpp is None:
        raise STDataError(
            f"{meta_path}: no plausible pixel size ({' or '.join(MPP_KEYS)}: "
            f"{[meta.get(k) for k in MPP_KEYS]}); training needs the image's µm per pixel"
        )
    try:
        adata = ad.read_h5ad(st)
    except Exception as exc:  # noqa: BLE001 - h5py and anndata raise many kinds for a bad file
        raise STDataError(f"{st}: not a readable .h5ad file ({' '.join(str(exc).split())})") from exc
    if adata.n_obs == 0:
        raise STDataError(f"{st}: has no spots")
    adata.obsm["spatial"] = _spot_centres(adata, st)
    adata.obs["patient"] = str(patient or meta.get("patient") or sample_id)
    adata.obs["section"] = str(sample_id)
    spot_um = meta.get("spot_diameter")
    spot_um = float(spot_um) if isinstance(spot_um, (int, float)) and spot_um > 0 else 55.0
    adata.uns["spatial"] = {
        str(sample_id): {
            "metadata": {
                "source": "HEST-1k (Jaume et al., 2024)",
                "sample": str(sample_id),
                "image_path": str(image.resolve()),
                **{k: str(meta[k]) for k in ("organ", "species", "st_technology", "oncotree_code") if meta.get(k)},
            },
            "scalefactors": {
                "mpp_fullres": mpp,
                "spot_diameter_fullres": spot_um / mpp,
                "tissue_hires_scalef": 1.0,
            },
        }
    }
    return adata


def _spot_centres(adata, st: Path) -> np.ndarray:
    """``(n, 2)`` spot centres ``(x, y)`` in full-resolution pixels, checked."""
    if "spatial" in adata.obsm:
        xy = np.asarray(adata.obsm["spatial"], dtype=float)
    elif {"pxl_col_in_fullres", "pxl_row_in_fullres"} <= set(adata.obs):
        xy = adata.obs[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(float)
    else:
        raise STDataError(f"{st}: no spot coordinates (obsm['spatial'] or obs pxl_col_in_fullres/pxl_row_in_fullres)")
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise STDataError(f"{st}: obsm['spatial'] must be (spots, 2) x, y pixels, got shape {xy.shape}")
    if not np.isfinite(xy).all():
        raise STDataError(f"{st}: {int((~np.isfinite(xy)).any(1).sum())} spots have no finite coordinates")
    return xy
