"""GeoTIFF, GeoJSON and table export, written atomically.

Georeferencing maps raster pixels onto the slide in level-0 pixels: a
ModelTransformationTag with positive x and y scale (y grows downwards, as on the slide)
whose translation is the top-left *corner* of raster pixel (0, 0) (GeoTIFF's default
PixelIsArea). So GDAL/rasterio ``xy(row, col)`` (the pixel centre) is the level-0
``(x, y)`` of that grid cell's spot centre. Multiply by the slide's mpp (stored in the
tags) for µm. No slide label, macro image or folder path is written.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_path

__all__ = ["write_geotiff", "write_geojson", "geotiff_transform", "provenance_tags"]

_MODEL_TRANSFORMATION = 34264
_GEO_KEY_DIRECTORY = 34735
_GDAL_METADATA = 42112
_GDAL_NODATA = 42113


def geotiff_transform(l0_origin: tuple[float, float], l0_stride: tuple[float, float]) -> list[float]:
    """The 4x4 ModelTransformation (row-major) placing grid pixel centres on spot centres."""
    sx, sy = l0_stride
    x0 = l0_origin[0] - sx / 2  # corner of pixel (0, 0)
    y0 = l0_origin[1] - sy / 2
    return [sx, 0.0, 0.0, x0, 0.0, sy, 0.0, y0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]


def provenance_tags(*, slide, model, mpp, patch_um, stride_um) -> dict[str, Any]:
    """GDAL metadata items every exported raster carries (no folder path, no label)."""
    return {
        "SLIDE": slide,
        "MODEL": model,
        "MPP_X": mpp[0],
        "MPP_Y": mpp[1],
        "PATCH_UM": patch_um,
        "STRIDE_UM": stride_um,
        "COORDINATES": "level-0 slide pixels (x right, y down); multiply by MPP for micrometres",
        "SOFTWARE": "napari-stpredict",
        "NOTE": "Research use only; not for diagnosis.",
    }


def domain_tags(domain: dict[str, Any] | None) -> dict[str, Any]:
    """GDAL metadata items of a prediction's out-of-domain verdict (none without one)."""
    if not domain:
        return {}
    return {"DOMAIN_VERDICT": domain.get("verdict"), "DOMAIN_SHARE_OUT": domain.get("share_out")}


def map_tags(provenance: dict[str, Any], *, gene: str, units: str, hidden_out_of_domain: int = 0) -> dict[str, Any]:
    """Every GDAL metadata item of a gene map, from the command line or napari's writer.

    Parameters
    ----------
    provenance : dict
        ``slide``, ``model``, ``mpp`` (x, y), ``patch_um``, ``stride_um`` and ``domain``
        (``{"verdict", "share_out"}`` or empty), as prediction layers carry them.
    gene, units : str
        The map's gene and its units.
    hidden_out_of_domain : int
        Spots left blank because they are out of domain (tagged only when some are).
    """
    tags = _prediction_tags(provenance) | {"GENE": gene, "UNITS": units}
    if hidden_out_of_domain:
        tags["OUT_OF_DOMAIN_BLANKED"] = hidden_out_of_domain
    return tags


def mask_tags(
    provenance: dict[str, Any], *, markers, threshold, automatic: bool | None, mode: str | None
) -> dict[str, Any]:
    """Every GDAL metadata item of a tumour mask (see `map_tags` for ``provenance``)."""
    return _prediction_tags(provenance) | {
        "MARKERS": ",".join(markers),
        "THRESHOLD": threshold,
        "THRESHOLD_AUTOMATIC": automatic,
        "THRESHOLD_MODE": mode,
        "VALUES": "1 = predicted tumour, 0 = other or no tissue",
    }


def _prediction_tags(provenance: dict[str, Any]) -> dict[str, Any]:
    tags = provenance_tags(
        slide=provenance.get("slide"),
        model=provenance.get("model"),
        mpp=provenance["mpp"],
        patch_um=provenance.get("patch_um"),
        stride_um=provenance.get("stride_um"),
    )
    return tags | domain_tags(provenance.get("domain"))


def _gdal_metadata(items: dict[str, Any]) -> str:
    from xml.sax.saxutils import escape

    body = "".join(f'<Item name="{escape(str(k))}">{escape(str(v))}</Item>' for k, v in items.items())
    # TIFF ASCII tags hold 7-bit text only: any other character (a slide named "Müller ü")
    # becomes an XML character reference, which GDAL and every XML reader decode back.
    return f"<GDALMetadata>{body}</GDALMetadata>".encode("ascii", "xmlcharrefreplace").decode("ascii")


def write_geotiff(
    path: str | Path,
    raster: np.ndarray,
    *,
    l0_origin: tuple[float, float],
    l0_stride: tuple[float, float],
    metadata: dict[str, Any] | None = None,
    nodata: float | None = None,
    tile: int = 256,
) -> Path:
    """Write a 2-D raster as a tiled, compressed GeoTIFF with overviews.

    Parameters
    ----------
    raster : numpy.ndarray
        float32 (heatmaps, NaN outside tissue) or uint8 (masks).
    l0_origin, l0_stride : tuple of float
        Level-0 centre of grid cell (0, 0) and the distance between cells.
    metadata : dict, optional
        Written as GDAL metadata items (units, gene, model, mpp...).
    nodata : float, optional
        Declared nodata value (NaN for heatmaps).
    """
    import tifffile

    raster = np.asarray(raster)
    if raster.ndim != 2:
        raise ValueError(f"raster must be 2-D, got shape {raster.shape}")
    if raster.dtype not in (np.float32, np.uint8):
        raise ValueError(f"raster must be float32 or uint8, got {raster.dtype}")
    path = Path(path)
    # GeoKeys: version 1.1.0, 1 key: GTRasterTypeGeoKey (1025) = RasterPixelIsArea (1).
    # No CRS: the coordinates are slide pixels, not a place on Earth.
    geokeys = np.array([1, 1, 0, 1, 1025, 0, 1, 1], np.uint16)
    extratags = [
        (_MODEL_TRANSFORMATION, "d", 16, geotiff_transform(l0_origin, l0_stride), True),
        (_GEO_KEY_DIRECTORY, "H", len(geokeys), geokeys.tolist(), True),
        (_GDAL_METADATA, "s", 0, _gdal_metadata(metadata or {}), True),
    ]
    if nodata is not None:
        extratags.append((_GDAL_NODATA, "s", 0, "nan" if np.isnan(nodata) else repr(nodata), True))
    levels = [raster]
    while max(levels[-1].shape) > tile // 2 and min(levels[-1].shape) > 1 and len(levels) < 8:
        levels.append(_downsample(levels[-1]))
    if len(levels) == 1:
        levels.append(_downsample(raster))  # at least one overview, as GIS tools expect
    with atomic_path(path) as tmp:
        with tifffile.TiffWriter(tmp) as tif:
            for i, level in enumerate(levels):
                t = min(tile, max(16, 16 * int(np.ceil(max(level.shape) / 16))))
                tif.write(
                    level,
                    tile=(t, t),
                    compression="zlib",
                    predictor=3 if level.dtype == np.float32 else 2,
                    subfiletype=0 if i == 0 else 1,
                    photometric="minisblack",
                    metadata=None,
                    extratags=extratags if i == 0 else [e for e in extratags if e[0] in (_GDAL_NODATA,)],
                )
    return path


def _downsample(level: np.ndarray) -> np.ndarray:
    """2x reduction: NaN-aware mean for float rasters, max for masks."""
    h, w = level.shape
    ph, pw = h + (h % 2), w + (w % 2)
    if level.dtype == np.uint8:
        padded = np.zeros((ph, pw), np.uint8)
        padded[:h, :w] = level
        return padded.reshape(ph // 2, 2, pw // 2, 2).max(axis=(1, 3))
    padded = np.full((ph, pw), np.nan, np.float32)
    padded[:h, :w] = level
    blocks = padded.reshape(ph // 2, 2, pw // 2, 2)
    with np.errstate(invalid="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmean(blocks, axis=(1, 3)).astype(np.float32)


def write_geojson(path: str | Path, collection: dict) -> Path:
    """Write a GeoJSON FeatureCollection atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(collection), encoding="utf-8")
    return path
