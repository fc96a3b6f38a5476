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


def write_heatmap_geotiff(path: str, data: Any, meta: dict) -> list[str]:
    """Write a heatmap (or confidence) Image layer as a float32 GeoTIFF."""
    from .io.geotiff import map_tags, write_geotiff
    from .layers import spot_values_of_display

    info = _placement(meta, "heatmap")
    # The same builder as the command line's (io/geotiff.py): the same tags for the same map.
    tags = map_tags(
        info,
        gene=info.get("gene", ""),
        units=info.get("units", ""),
        hidden_out_of_domain=info.get("hidden_out_of_domain", 0),
    )
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
    from .io.geotiff import mask_tags, write_geotiff

    info = _placement(meta, "tumour mask")
    tags = mask_tags(
        info,
        markers=info.get("markers", []),
        threshold=info.get("threshold"),
        automatic=info.get("automatic"),
        mode=info.get("threshold_mode"),
    )
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
