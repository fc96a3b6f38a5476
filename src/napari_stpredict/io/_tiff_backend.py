"""Slides read by tifffile: TIFFs OpenSlide refuses or sees only partly.

That is OME-TIFF and other SubIFD pyramids, stripped TIFFs, and any TIFF OpenSlide
does not recognise. Also a structural check used before any backend opens a TIFF.
"""

from __future__ import annotations

import re
import threading
import weakref
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SlideFormatError, SlideReadError
from .base import Slide, paste_region, plausible_mpp

__all__ = ["TiffSlide", "check_tiff_complete"]


def _open_tiff(path: Path):
    import logging

    import tifffile

    # tifffile logs structural problems as warnings before failing or degrading; our
    # own error (raised below or by check_tiff_complete) says it clearly instead.
    logger = logging.getLogger("tifffile")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        return tifffile.TiffFile(str(path))
    except Exception as exc:  # tifffile raises many types for broken headers
        raise SlideReadError(
            f"{path}: the TIFF structure cannot be parsed ({exc}); the file is truncated or corrupt"
        ) from exc
    finally:
        logger.setLevel(level)


def check_tiff_complete(path: Path) -> int:
    """Raise `SlideReadError` if a TIFF's tiles or strips point past the end of the file.

    A partial download or copy usually keeps a valid header; OpenSlide would open it and
    fail (or show white) only when the missing tiles are read.

    Returns
    -------
    int
        Pyramid levels tifffile finds in the first image series (parsed once, here).
    """
    size = path.stat().st_size
    with _open_tiff(path) as tif:
        try:
            pages = list(tif.pages)
            if not pages:
                raise SlideReadError(
                    f"{path}: the TIFF has no readable image directory; the file is truncated "
                    f"({size:,} bytes) or corrupt"
                )
            # SubIFD levels (OME pyramids) are not top-level pages: reach them through the series.
            level_pages = [lvl.pages[0] for s in tif.series for lvl in s.levels if lvl.pages]
            n_levels = len(tif.series[0].levels) if tif.series else 0
            end = 0
            for page in {id(p): p for p in pages + level_pages}.values():
                offsets = np.asarray(getattr(page, "dataoffsets", ()), dtype=np.int64)
                counts = np.asarray(getattr(page, "databytecounts", ()), dtype=np.int64)
                if offsets.size:
                    end = max(end, int((offsets + counts).max()))
        except SlideReadError:
            raise
        except Exception as exc:
            raise SlideReadError(
                f"{path}: the TIFF directory is corrupt ({exc}); the file is truncated or damaged"
            ) from exc
    if end > size:
        raise SlideReadError(
            f"{path}: the file is truncated: it is {size:,} bytes but its image data extends to "
            f"{end:,} bytes (an incomplete download or copy?)"
        )
    return n_levels


def _mpp_from_tiff(tif, page) -> tuple[float | None, float | None]:
    if tif.is_ome and tif.ome_metadata:
        mx = re.search(r'PhysicalSizeX="([0-9.eE+-]+)"', tif.ome_metadata)
        my = re.search(r'PhysicalSizeY="([0-9.eE+-]+)"', tif.ome_metadata)
        unit_match = re.search(r'PhysicalSizeXUnit="([^"]+)"', tif.ome_metadata)
        factor = {"µm": 1.0, "um": 1.0, "nm": 1e-3, "mm": 1e3}.get(unit_match.group(1) if unit_match else "µm")
        if mx and my and factor is not None:
            return plausible_mpp(float(mx.group(1)) * factor), plausible_mpp(float(my.group(1)) * factor)
    desc = page.description or ""
    svs = re.search(r"MPP\s*=\s*([0-9.]+)", desc)
    if svs:
        value = plausible_mpp(svs.group(1))
        return value, value
    tags = page.tags
    if "XResolution" in tags and "YResolution" in tags and "ResolutionUnit" in tags:
        unit = int(tags["ResolutionUnit"].value)
        per_unit_um = {2: 25400.0, 3: 10000.0}.get(unit)
        if per_unit_um is not None:
            xr, yr = tags["XResolution"].value, tags["YResolution"].value
            try:
                mpp_x = per_unit_um * xr[1] / xr[0]
                mpp_y = per_unit_um * yr[1] / yr[0]
            except ZeroDivisionError:
                return None, None
            return plausible_mpp(mpp_x), plausible_mpp(mpp_y)
    return None, None


def _vendor(tif) -> str:
    if tif.is_ome:
        return "ome-tiff"
    if tif.is_svs:
        return "aperio"
    if tif.is_ndpi:
        return "hamamatsu"
    return "generic-tiff"


class TiffSlide(Slide):
    """A slide read through tifffile and its zarr store (one zarr array per level)."""

    backend = "tifffile"

    def __init__(self, path: Path) -> None:
        import zarr

        self.path = Path(path)
        self._tif = _open_tiff(self.path)
        try:
            if not self._tif.series:
                raise SlideFormatError(f"{self.path}: the TIFF holds no image series")
            series = self._tif.series[0]
            axes = series.axes
            if axes not in ("YXS", "SYX", "YX"):
                raise SlideFormatError(
                    f"{self.path}: not a 2-D RGB or grey slide (tifffile axes {axes!r}, shape {series.shape})"
                )
            self._axes = axes
            # zarr's open() is typed as array-or-group; a tifffile series level is an array.
            self._levels: list[Any] = [zarr.open(series.aszarr(level=i), mode="r") for i in range(len(series.levels))]
            page = series.levels[0].pages[0]
            if page.dtype != np.uint8:
                raise SlideFormatError(
                    f"{self.path}: samples are {page.dtype}; only 8-bit RGB or grey slides are supported"
                )
            # A palette image stores colour indices: its colour map gives the colours (read
            # as grey, the indices were refused as a dark fluorescence image).
            self._palette = None
            if int(page.photometric) == 3 and page.colormap is not None:
                colormap = np.asarray(page.colormap)
                shift = 8 if colormap.max() > 255 else 0  # TIFF stores 16-bit colour values
                self._palette = np.ascontiguousarray((colormap >> shift).astype(np.uint8).T)  # (256, 3)
            self._mpp_xy = _mpp_from_tiff(self._tif, page)
            self._vendor = _vendor(self._tif)
            self._tiles = []
            for lvl in series.levels:
                p = lvl.pages[0]
                if p.is_tiled:
                    self._tiles.append((int(p.tilewidth), int(p.tilelength)))
                else:
                    self._tiles.append((int(p.imagewidth), int(getattr(p, "rowsperstrip", 0) or p.imagelength)))
            self._associated = {s.name.lower(): s for s in self._tif.series[1:] if s.name}
        except Exception:
            self._tif.close()
            raise
        self._lock = threading.Lock()
        self._closed = False
        self._finalizer = weakref.finalize(self, self._tif.close)

    def _dims(self, level: int) -> tuple[int, int]:
        shape = self._levels[level].shape
        if self._axes == "SYX":
            return shape[2], shape[1]
        return shape[1], shape[0]

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        return tuple(self._dims(i) for i in range(len(self._levels)))

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        w0, h0 = self._dims(0)
        return tuple((w0 / w + h0 / h) / 2 for (w, h) in self.level_dimensions)

    def _file_mpp(self) -> tuple[float | None, float | None]:
        return self._mpp_xy

    @property
    def vendor(self) -> str:
        return self._vendor

    def tile_size(self, level: int) -> tuple[int, int]:
        return self._tiles[level]

    @property
    def associated_image_names(self) -> tuple[str, ...]:
        return tuple(self._associated)

    def associated_image(self, name: str) -> np.ndarray:
        if name not in self._associated:
            return super().associated_image(name)
        with self._lock:
            return _to_rgb(self._associated[name].asarray(), self._associated[name].axes)

    def _read_level(self, level: int, level_xy: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
        if self._closed:
            raise SlideReadError(f"{self.path}: the slide was closed")
        x0, y0 = level_xy
        width, height = size
        lw, lh = self._dims(level)
        sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x0 + width, lw), min(y0 + height, lh)
        if sx1 <= sx0 or sy1 <= sy0:
            return np.full((height, width, 3), 255, np.uint8)
        arr = self._levels[level]
        try:
            with self._lock:
                if self._axes == "SYX":
                    data = arr[:, sy0:sy1, sx0:sx1]
                else:
                    data = arr[sy0:sy1, sx0:sx1]
        except Exception as exc:
            ds = self.level_downsamples[level]
            raise SlideReadError(
                f"{self.path}: corrupt or truncated image data in the region at level-0 "
                f"(x, y) = ({round(x0 * ds)}, {round(y0 * ds)}), level {level}: {exc}"
            ) from exc
        data = np.asarray(data)
        rgb = self._palette[data] if self._palette is not None and data.ndim == 2 else _to_rgb(data, self._axes)
        return (
            paste_region(rgb, (x0 - sx0, y0 - sy0), size)
            if (sx0, sy0, sx1, sy1)
            != (
                x0,
                y0,
                x0 + width,
                y0 + height,
            )
            else rgb
        )

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._finalizer()
                self._closed = True


def _to_rgb(data: np.ndarray, axes: str) -> np.ndarray:
    if axes == "SYX":
        data = np.moveaxis(data, 0, -1)
    if data.ndim == 2:
        data = np.repeat(data[..., None], 3, axis=2)
    return np.ascontiguousarray(data[..., :3])
