"""The `Slide` base class, the in-memory `ArraySlide` and their helpers.

Backends (OpenSlide, tifffile, Pillow) subclass `Slide` from here; `io/slide.py` is the
`open_slide` factory that chooses one, so no module imports its own importer.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SlideFormatError
from .resolution import MAX_PLAUSIBLE_MPP, plausible_mpp
from .resolution import mpp_pair as _mpp_pair  # its old name here, for the io modules

__all__ = ["Slide", "ArraySlide", "plausible_mpp", "resize_rgb", "paste_region", "MAX_PLAUSIBLE_MPP"]


def printable_name(name: str) -> str:
    """A file name as text every output can hold: bytes that were not UTF-8 (Python keeps
    them as surrogate escapes, which HDF5, YAML and JSON writers refuse) become U+FFFD."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


class Slide(ABC):
    """A multi-resolution RGB slide image.

    Subclasses provide the pyramid geometry and `_read_level`; this class provides
    argument checking, reading at a requested resolution and thumbnails.
    """

    #: Path of the file, or None for an in-memory slide.
    path: Path | None = None
    #: Which library reads the file: "openslide", "tifffile", "pillow" or "array".
    backend: str = ""

    # --- geometry, provided by subclasses -------------------------------------------
    @property
    @abstractmethod
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        """``(width, height)`` of each level, level 0 first."""

    @property
    @abstractmethod
    def level_downsamples(self) -> tuple[float, ...]:
        """Downsample factor of each level relative to level 0."""

    @abstractmethod
    def _file_mpp(self) -> tuple[float | None, float | None]:
        """Level-0 µm per pixel in x and y as the file records them (None if it does not)."""

    #: The caller's mpp, used only when the file records none (see `open_slide`).
    _fallback_mpp: tuple[float | None, float | None] = (None, None)

    @property
    def records_mpp(self) -> bool:
        """Whether the file itself records its resolution on both axes."""
        file_mpp = self._file_mpp()
        return file_mpp[0] is not None and file_mpp[1] is not None

    def use_typed_mpp(self, mpp: float | tuple[float, float]) -> None:
        """The resolution a user typed for this slide, used where the file records none.

        Parameters
        ----------
        mpp : float or (float, float)
            µm per pixel (checked like ``--mpp``).

        Raises
        ------
        ValueError
            Naming the slide, for a value outside the plausible range.
        """
        self._fallback_mpp = _mpp_pair(mpp, self.name)

    @property
    def mpp(self) -> tuple[float | None, float | None]:
        """Level-0 µm per pixel in x and y: the file's, else the caller's, else None."""
        file_mpp = self._file_mpp()
        if file_mpp[0] is not None and file_mpp[1] is not None:
            return file_mpp
        return self._fallback_mpp

    @property
    @abstractmethod
    def vendor(self) -> str:
        """Format or scanner vendor, e.g. "aperio", "hamamatsu", "generic-tiff", "ome-tiff"."""

    @abstractmethod
    def tile_size(self, level: int) -> tuple[int, int]:
        """``(width, height)`` of the stored tiles (or strips) of ``level``."""

    @property
    def associated_image_names(self) -> tuple[str, ...]:
        """Names of associated images (label, macro, thumbnail) the file holds."""
        return ()

    def associated_image(self, name: str) -> np.ndarray:
        """Return an associated image as an RGB array.

        Parameters
        ----------
        name : str
            One of `associated_image_names`.
        """
        raise KeyError(f"{self.name}: no associated image {name!r}; it has {list(self.associated_image_names)}")

    @property
    def properties(self) -> dict[str, str]:
        """Raw metadata of the file. May hold identifiers: never export it as a whole."""
        return {}

    @property
    def objective_power(self) -> float | None:
        """Scanning objective magnification if the file records it."""
        return None

    @abstractmethod
    def _read_level(self, level: int, level_xy: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
        """Read ``size`` pixels of ``level`` at level coordinates ``level_xy`` (may be out of bounds)."""

    def close(self) -> None:  # noqa: B027 - optional for subclasses: in-memory slides hold nothing
        """Release the file handle. Reading afterwards is an error."""

    # --- derived -------------------------------------------------------------------
    @property
    def name(self) -> str:
        """File name without folders (safe to show or export)."""
        return printable_name(self.path.name) if self.path is not None else "in-memory slide"

    @property
    def level_count(self) -> int:
        """Number of pyramid levels."""
        return len(self.level_dimensions)

    @property
    def dimensions(self) -> tuple[int, int]:
        """Level-0 ``(width, height)``."""
        return self.level_dimensions[0]

    @property
    def mpp_x(self) -> float | None:
        """Level-0 µm per pixel along x, or None."""
        return self.mpp[0]

    @property
    def mpp_y(self) -> float | None:
        """Level-0 µm per pixel along y, or None."""
        return self.mpp[1]

    def best_level_for_downsample(self, downsample: float) -> int:
        """Return the coarsest level whose downsample does not exceed ``downsample``.

        Reading from that level and shrinking never loses resolution.
        """
        if not downsample > 0:
            raise ValueError(f"downsample must be positive, got {downsample!r}")
        best = 0
        for level, ds in enumerate(self.level_downsamples):
            if ds <= downsample * (1 + 1e-6):
                best = level
        return best

    def read_region(self, l0_location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """Read a region of one pyramid level.

        Parameters
        ----------
        l0_location : tuple of int
            Top-left ``(x, y)`` in level-0 pixels.
        level : int
            Pyramid level to read from.
        size : tuple of int
            ``(width, height)`` in pixels of ``level``.

        Returns
        -------
        numpy.ndarray
            ``(height, width, 3)`` uint8 RGB.
        """
        if not 0 <= level < self.level_count:
            raise ValueError(f"{self.name}: level must be in 0..{self.level_count - 1}, got {level}")
        width, height = (int(v) for v in size)
        if width <= 0 or height <= 0:
            raise ValueError(f"{self.name}: size must be positive (width, height), got {size}")
        ds = self.level_downsamples[level]
        x0, y0 = (int(v) for v in l0_location)
        return self.read_level_region(level, (int(math.floor(x0 / ds)), int(math.floor(y0 / ds))), (width, height))

    def read_level_region(self, level: int, level_xy: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
        """Read ``size`` pixels of ``level`` whose top-left is ``level_xy`` in that level's own pixels.

        Exact for any downsample; `read_region` (level-0 location) goes through it.
        """
        if not 0 <= level < self.level_count:
            raise ValueError(f"{self.name}: level must be in 0..{self.level_count - 1}, got {level}")
        width, height = (int(v) for v in size)
        if width <= 0 or height <= 0:
            raise ValueError(f"{self.name}: size must be positive (width, height), got {size}")
        region = self._read_level(level, (int(level_xy[0]), int(level_xy[1])), (width, height))
        assert region.shape == (height, width, 3) and region.dtype == np.uint8, region.shape
        return region

    def read_region_at_mpp(self, l0_location: tuple[int, int], size: tuple[int, int], mpp: float) -> np.ndarray:
        """Read a region resampled to a requested resolution.

        The best pyramid level is read (the coarsest that is at least as fine as
        ``mpp``) and resized, so one call works on 20x and 40x scans alike.

        Parameters
        ----------
        l0_location : tuple of int
            Top-left ``(x, y)`` in level-0 pixels.
        size : tuple of int
            ``(width, height)`` of the returned array, in pixels at ``mpp``.
        mpp : float
            Wanted µm per pixel.

        Returns
        -------
        numpy.ndarray
            ``(height, width, 3)`` uint8 RGB.

        Raises
        ------
        SlideFormatError
            The slide's own mpp is unknown.
        """
        mpp_x, mpp_y = self.mpp
        if mpp_x is None or mpp_y is None:
            raise SlideFormatError(
                f"{self.name}: the slide does not record its resolution (mpp); "
                "pass mpp=... when opening it to read at a physical resolution"
            )
        if not mpp > 0:
            raise ValueError(f"mpp must be positive, got {mpp!r}")
        out_w, out_h = (int(v) for v in size)
        ds_x, ds_y = mpp / mpp_x, mpp / mpp_y
        level = self.best_level_for_downsample(min(ds_x, ds_y))
        level_ds = self.level_downsamples[level]
        read_w = max(1, round(out_w * ds_x / level_ds))
        read_h = max(1, round(out_h * ds_y / level_ds))
        region = self.read_region(l0_location, level, (read_w, read_h))
        return resize_rgb(region, (out_w, out_h))

    def thumbnail(self, max_size: int = 1024) -> np.ndarray:
        """Return the whole slide shrunk so that its longer side is at most ``max_size``.

        The level-0 pixels per thumbnail pixel are ``dimensions[0] / thumb.shape[1]``
        along x and ``dimensions[1] / thumb.shape[0]`` along y.
        """
        width, height = self.dimensions
        scale = min(1.0, max_size / max(width, height))
        out_w, out_h = max(1, round(width * scale)), max(1, round(height * scale))
        level = self.best_level_for_downsample(1.0 / scale)
        level_w, level_h = self.level_dimensions[level]
        region = self.read_region((0, 0), level, (level_w, level_h))
        return resize_rgb(region, (out_w, out_h))

    def summary(self) -> dict[str, Any]:
        """Metadata safe to show or export: no label, macro, raw properties or folder path."""
        return {
            "name": self.name,
            "vendor": self.vendor,
            "backend": self.backend,
            "dimensions": list(self.dimensions),
            "level_count": self.level_count,
            "level_dimensions": [list(d) for d in self.level_dimensions],
            "level_downsamples": [float(d) for d in self.level_downsamples],
            "mpp_x": self.mpp_x,
            "mpp_y": self.mpp_y,
            "objective_power": self.objective_power,
            "associated_images": list(self.associated_image_names),
        }

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        w, h = self.dimensions
        return (
            f"<{type(self).__name__} {self.name!r} {w}x{h} px, {self.level_count} levels, "
            f"mpp={self.mpp_x}, vendor={self.vendor!r}>"
        )


def resize_rgb(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an RGB uint8 array to ``(width, height)`` with antialiasing (Pillow)."""
    from PIL import Image

    out_w, out_h = size
    if image.shape[1] == out_w and image.shape[0] == out_h:
        return image
    resized = Image.fromarray(image).resize((out_w, out_h), Image.Resampling.BILINEAR, reducing_gap=3.0)
    return np.asarray(resized)


def paste_region(source: np.ndarray, level_xy: tuple[int, int], size: tuple[int, int], fill: int = 255) -> np.ndarray:
    """Cut ``size`` pixels at ``level_xy`` out of an in-memory level, padding outside with ``fill``."""
    x0, y0 = level_xy
    width, height = size
    out = np.full((height, width, 3), fill, dtype=np.uint8)
    src_h, src_w = source.shape[:2]
    sx0, sy0 = max(x0, 0), max(y0, 0)
    sx1, sy1 = min(x0 + width, src_w), min(y0 + height, src_h)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = source[sy0:sy1, sx0:sx1, :3]
    return out


class ArraySlide(Slide):
    """A slide held in memory, for tests and for plain images.

    Parameters
    ----------
    image : numpy.ndarray
        ``(height, width, 3)`` or ``(height, width, 4)`` uint8 level-0 image.
    mpp : float or tuple of float, optional
        Level-0 µm per pixel (one value, or x and y).
    levels : int
        How many pyramid levels to build by halving (1 = no pyramid).
    name : str
        Name shown in messages and metadata.
    """

    backend = "array"

    def __init__(
        self,
        image: np.ndarray,
        *,
        mpp: float | tuple[float, float] | None = None,
        levels: int = 1,
        name: str = "in-memory slide",
        vendor: str = "array",
        tile: int = 256,
    ) -> None:
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] not in (3, 4) or image.dtype != np.uint8:
            raise SlideFormatError(
                f"{name}: expected a (height, width, 3) uint8 RGB image, got shape {image.shape} "
                f"and dtype {image.dtype}"
            )
        self._levels = [np.ascontiguousarray(image[..., :3])]
        for _ in range(1, levels):
            prev = self._levels[-1]
            h, w = prev.shape[0] // 2, prev.shape[1] // 2
            if h < 1 or w < 1:
                break
            self._levels.append(resize_rgb(prev, (w, h)))
        self._mpp = _mpp_pair(mpp, name)
        self._name = name
        self._vendor = vendor
        self._tile = tile
        self._content_key: str | None = None

    def content_fingerprint(self) -> str:
        """Hash of the level-0 pixels (and shape), computed once: the cache key of a slide
        with no file, e.g. an image napari's own reader opened (about 1 s per 1,000 MPix).
        A different array, or the same file read differently (EXIF rotation), is another key."""
        if self._content_key is None:
            import hashlib

            level0 = self._levels[0]
            h = hashlib.blake2b(f"array|{level0.shape}".encode(), digest_size=20)
            h.update(np.ascontiguousarray(level0).view(np.uint8).ravel().data)
            self._content_key = h.hexdigest()
        return self._content_key

    @property
    def name(self) -> str:
        return printable_name(self.path.name) if self.path is not None else self._name

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        return tuple((lv.shape[1], lv.shape[0]) for lv in self._levels)

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        w0 = self._levels[0].shape[1]
        h0 = self._levels[0].shape[0]
        return tuple(((w0 / lv.shape[1]) + (h0 / lv.shape[0])) / 2 for lv in self._levels)

    def _file_mpp(self) -> tuple[float | None, float | None]:
        return self._mpp

    def use_typed_mpp(self, mpp: float | tuple[float, float]) -> None:
        """An image in memory has no file to record its resolution: the typed value is it."""
        self._mpp = _mpp_pair(mpp, self.name)

    @property
    def vendor(self) -> str:
        return self._vendor

    def tile_size(self, level: int) -> tuple[int, int]:
        return (self._tile, self._tile)

    def _read_level(self, level: int, level_xy: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
        return paste_region(self._levels[level], level_xy, size)
