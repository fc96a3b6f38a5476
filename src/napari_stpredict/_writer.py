"""npe2 writer contributions: prediction layers to GeoTIFF (File > Save Layers).

Only layers made by napari-stpredict can be written: their metadata carries the grid
placement on the slide that the GeoTIFF georeferencing needs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .errors import StPredictError

__all__ = ["write_heatmap_geotiff", "write_mask_geotiff"]


def _placement(meta: dict[str, Any], what: str):
    info = (meta or {}).get("metadata", {}).get("stpredict") or (meta or {}).get("stpredict")
    if not info or "l0_origin" not in info:
        raise StPredictError(
            f"only napari-stpredict {what} layers can be saved as GeoTIFF by this writer "
            "(the layer has no slide placement in its metadata)"
        )
    return info


def _tags(info: dict[str, Any]) -> dict[str, Any]:
    from .io.geotiff import domain_tags, provenance_tags

    tags = provenance_tags(
        slide=info.get("slide"),
        model=info.get("model"),
        mpp=info["mpp"],
        patch_um=info.get("patch_um"),
        stride_um=info.get("stride_um"),
    )
    tags |= domain_tags(info.get("domain"))  # as the CLI's GeoTIFFs carry it (inference/export.py)
    if info.get("hidden_out_of_domain"):
        tags["OUT_OF_DOMAIN_BLANKED"] = info["hidden_out_of_domain"]
    return tags


def write_heatmap_geotiff(path: str, data: Any, meta: dict) -> list[str]:
    """Write a heatmap (or confidence) Image layer as a float32 GeoTIFF."""
    from .io.geotiff import write_geotiff
    from .layers import spot_values_of_display

    info = _placement(meta, "heatmap")
    tags = _tags(info) | {"GENE": info.get("gene", ""), "UNITS": info.get("units", "")}
    # One value per spot, on the spot grid the placement describes (the layer draws each
    # spot as sub-cells): the file equals the CLI's GeoTIFF of the same map.
    values = spot_values_of_display(data, info.get("display_oversample", 1))
    out = write_geotiff(
        _tif(path),
        np.asarray(values, np.float32),
        l0_origin=tuple(info["l0_origin"]),
        l0_stride=tuple(info["l0_stride"]),
        metadata=tags,
        nodata=np.nan,
    )
    return [str(out)]


def write_mask_geotiff(path: str, data: Any, meta: dict) -> list[str]:
    """Write a tumour-mask Labels layer as a uint8 GeoTIFF."""
    from .io.geotiff import write_geotiff

    info = _placement(meta, "tumour mask")
    tags = _tags(info) | {
        "MARKERS": ",".join(info.get("markers", [])),
        "THRESHOLD": info.get("threshold"),
        "VALUES": "1 = predicted tumour, 0 = other or no tissue",
    }
    out = write_geotiff(
        _tif(path),
        np.asarray(data).astype(np.uint8),
        l0_origin=tuple(info["l0_origin"]),
        l0_stride=tuple(info["l0_stride"]),
        metadata=tags,
    )
    return [str(out)]


def _tif(path: str) -> Path:
    p = Path(path)
    return p if p.suffix.lower() in (".tif", ".tiff") else p.with_suffix(".tif")
