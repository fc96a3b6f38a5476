"""Slides read by OpenSlide (Aperio, Hamamatsu, Leica, Ventana, MIRAX, DICOM, generic TIFF)."""

from __future__ import annotations

import threading
import weakref
from pathlib import Path

import numpy as np

from ..errors import SlideFormatError, SlideReadError
from .base import Slide, plausible_mpp

__all__ = ["OpenSlideSlide", "openslide_format"]


def _openslide():
    # openslide-bin ships the shared library; importing openslide finds it.
    import openslide

    return openslide


def openslide_format(path: Path) -> str | None:
    """Return OpenSlide's vendor name for ``path``, or None if OpenSlide cannot read it."""
    return _openslide().OpenSlide.detect_format(str(path))


def rgba_to_rgb_on_white(rgba: np.ndarray) -> np.ndarray:
    """Composite an RGBA array (OpenSlide's output) onto white, as glass looks."""
    rgb = rgba[..., :3]
    alpha = rgba[..., 3]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgb)
    a = alpha[..., None].astype(np.float32) / 255.0
    out = rgb.astype(np.float32) * a + 255.0 * (1.0 - a)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


class OpenSlideSlide(Slide):
    """A slide read through openslide-python."""

    backend = "openslide"

    def __init__(self, path: Path) -> None:
        openslide = _openslide()
        self.path = Path(path)
        try:
            self._osr = openslide.OpenSlide(str(self.path))
        except openslide.OpenSlideUnsupportedFormatError as exc:
            raise SlideFormatError(f"{self.path}: OpenSlide does not support this file: {exc}") from exc
        except openslide.OpenSlideError as exc:
            raise SlideReadError(
                f"{self.path}: OpenSlide cannot open this file ({exc}); it may be truncated or corrupt"
            ) from exc
        props = self._osr.properties
        # Cached: cheap to ask later, and still answerable after close().
        self._level_dimensions = tuple(tuple(d) for d in self._osr.level_dimensions)
        self._level_downsamples = tuple(float(d) for d in self._osr.level_downsamples)
        self._vendor = props.get("openslide.vendor", "unknown")
        self._mpp_xy = (
            plausible_mpp(props.get("openslide.mpp-x")),
            plausible_mpp(props.get("openslide.mpp-y")),
        )
        self._tiles = []
        for level in range(self._osr.level_count):
            tw = props.get(f"openslide.level[{level}].tile-width")
            th = props.get(f"openslide.level[{level}].tile-height")
            self._tiles.append((int(tw), int(th)) if tw and th else (256, 256))
        self._closed = False
        self._lock = threading.Lock()
        # Close the C handle when the slide is garbage-collected (e.g. its layer deleted).
        # Every handle this slide opened (see `_reopen`), closed together with the slide.
        self._handles = [self._osr]
        self._finalizer = weakref.finalize(self, _close_handles, self._handles)

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        return self._level_dimensions

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        return self._level_downsamples

    def _file_mpp(self) -> tuple[float | None, float | None]:
        return self._mpp_xy

    @property
    def vendor(self) -> str:
        return self._vendor

    @property
    def objective_power(self) -> float | None:
        value = self._osr.properties.get("openslide.objective-power")
        try:
            return float(value) if value is not None else None
        except ValueError:
            return None

    @property
    def properties(self) -> dict[str, str]:
        return dict(self._osr.properties)

    def tile_size(self, level: int) -> tuple[int, int]:
        return self._tiles[level]

    @property
    def associated_image_names(self) -> tuple[str, ...]:
        return tuple(self._osr.associated_images.keys())

    def associated_image(self, name: str) -> np.ndarray:
        if name not in self._osr.associated_images:
            return super().associated_image(name)
        return rgba_to_rgb_on_white(np.asarray(self._osr.associated_images[name].convert("RGBA")))

    def _read_level(self, level: int, level_xy: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
        if self._closed:
            raise SlideReadError(f"{self.path}: the slide was closed")
        openslide = _openslide()
        ds = self.level_downsamples[level]
        l0_xy = (round(level_xy[0] * ds), round(level_xy[1] * ds))
        import ctypes

        errors = (openslide.OpenSlideError, ctypes.ArgumentError)
        osr = self._osr
        try:
            try:
                region = osr.read_region(l0_xy, level, size)
            except errors:
                # Another reader thread met a damaged region and replaced the handle this
                # read had picked up (its errors are sticky): read again on the fresh one.
                if self._osr is osr or self._closed:
                    raise
                osr = self._osr
                region = osr.read_region(l0_xy, level, size)
        except errors as exc:
            # OpenSlide's errors are sticky: after one, every read of the handle fails.
            # A fresh handle keeps the rest of the slide readable.
            self._reopen(osr)
            raise SlideReadError(
                f"{self.path}: corrupt or truncated image data in the region at level-0 "
                f"(x, y) = {l0_xy}, level {level}, size {size}: {exc}"
            ) from exc
        return rgba_to_rgb_on_white(np.asarray(region))

    def _reopen(self, failed) -> None:
        """Replace the handle ``failed`` by a fresh one (once, whichever thread gets here first)."""
        openslide = _openslide()
        with self._lock:
            if self._closed or self._osr is not failed:
                return
            # The failed handle stays open until the slide closes: another reader thread may
            # be inside a read on it right now, and closing it there would crash the process.
            self._osr = openslide.OpenSlide(str(self.path))
            self._handles.append(self._osr)

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._finalizer()
                self._closed = True


def _close_handles(handles: list) -> None:
    for handle in handles:
        handle.close()
