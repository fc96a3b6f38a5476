"""Write a prediction's files: table, per-gene GeoTIFFs, tumour mask GeoTIFF and GeoJSON, overview."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..io.atomic import atomic_path
from ..io.geotiff import write_geojson, write_geotiff
from .prediction import UNITS, Prediction
from .tumor import TumorMask, mask_polygons, polygons_geojson

__all__ = ["export_gene_geotiff", "export_tumor", "export_overview", "safe_filename"]


def safe_filename(name: str) -> str:
    """A file-name-safe version of a gene or slide name (Windows-safe too)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _common_tags(prediction: Prediction) -> dict[str, Any]:
    meta = prediction.meta
    return {
        "SLIDE": meta["slide"]["name"],
        "MPP_X": meta.get("mpp_x"), "MPP_Y": meta.get("mpp_y"),
        "COORDINATES": "level-0 slide pixels (x right, y down); multiply by MPP for micrometres",
        "MODEL": meta["model"]["name"], "PATCH_UM": meta["patch_um"], "STRIDE_UM": meta["stride_um"],
        "SOFTWARE": "napari-stpredict", "NOTE": "Research use only; not for diagnosis.",
    }


def export_gene_geotiff(prediction: Prediction, gene: str, path: Path) -> Path:
    """float32 GeoTIFF of one gene's predicted expression (NaN outside tissue)."""
    heat = prediction.heatmap(gene)
    tags = _common_tags(prediction) | {"GENE": heat.name, "UNITS": UNITS}
    return write_geotiff(path, heat.raster, l0_origin=heat.l0_origin, l0_stride=heat.l0_stride, metadata=tags,
                         nodata=np.nan)


def export_tumor(prediction: Prediction, mask: TumorMask, tif_path: Path, geojson_path: Path) -> None:
    """uint8 tumour-mask GeoTIFF (1 tumour, 0 not) and its contours as GeoJSON (level-0 pixels)."""
    meta = prediction.meta
    origin, stride = tuple(meta["grid_origin_l0"]), tuple(meta["grid_stride_l0"])
    tags = _common_tags(prediction) | {"MARKERS": ",".join(mask.markers), "THRESHOLD": mask.threshold,
                                       "THRESHOLD_AUTOMATIC": mask.automatic,
                                       "VALUES": "1 = predicted tumour, 0 = other or no tissue"}
    write_geotiff(tif_path, mask.raster, l0_origin=origin, l0_stride=stride, metadata=tags)
    polygons = mask_polygons(mask.raster, origin, stride)
    write_geojson(geojson_path, polygons_geojson(polygons, properties={"markers": mask.markers,
                                                                       "threshold": mask.threshold}))


def export_overview(slide, prediction: Prediction, gene: str, mask: TumorMask | None, path: Path) -> Path:
    """PNG: thumbnail, heatmap of ``gene``, tumour contour."""
    from PIL import Image

    from .overview import overview_image

    image = overview_image(slide, prediction.heatmap(gene), None if mask is None else mask.raster)
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")
    return path
