"""Lazy dask multiscale arrays of a `Slide`, for napari.

One dask array per pyramid level, chunks aligned to the stored tiles, each chunk read
with `Slide.read_region` only when napari displays it.
"""

from __future__ import annotations

import numpy as np

from .base import Slide

__all__ = ["slide_pyramid", "level_chunks"]

#: Chunks smaller than this many pixels per side make napari issue too many reads;
#: larger than the maximum make each read slow. Tiles are grouped or split to fit.
MIN_CHUNK = 512
MAX_CHUNK = 2048


def _fit(tile: int, extent: int) -> int:
    if tile <= 0:
        return MIN_CHUNK
    if tile > MAX_CHUNK:
        return min(MAX_CHUNK // 2, extent)  # e.g. NDPI strips: no tile grid to keep
    chunk = tile * max(1, -(-MIN_CHUNK // tile))  # a whole number of tiles
    return min(chunk, extent)


def level_chunks(slide: Slide, level: int) -> tuple[int, int]:
    """``(height, width)`` of the dask chunks of one level: whole tiles, about 512-2048 px."""
    tile_w, tile_h = slide.tile_size(level)
    width, height = slide.level_dimensions[level]
    return _fit(tile_h, height), _fit(tile_w, width)


class _LevelView:
    """Array-like view of one level that dask slices chunk by chunk."""

    def __init__(self, slide: Slide, level: int) -> None:
        self._slide = slide
        self._level = level
        width, height = slide.level_dimensions[level]
        self.shape = (height, width, 3)
        self.dtype = np.dtype(np.uint8)
        self.ndim = 3

    def __getitem__(self, key) -> np.ndarray:
        ys, xs, cs = (tuple(key) + (slice(None),) * 3)[:3]
        y0, y1, _ = ys.indices(self.shape[0])
        x0, x1, _ = xs.indices(self.shape[1])
        if y1 <= y0 or x1 <= x0:
            return np.zeros((max(0, y1 - y0), max(0, x1 - x0), 3), np.uint8)[:, :, cs]
        region = self._slide.read_level_region(self._level, (x0, y0), (x1 - x0, y1 - y0))
        return region[:, :, cs]


def slide_pyramid(slide: Slide) -> list:
    """Return the slide as a list of dask arrays ``(height, width, 3)``, finest first.

    Nothing is read until a chunk is computed.
    """
    import dask.array as da

    levels = []
    for level in range(slide.level_count):
        chunks = level_chunks(slide, level) + (3,)
        levels.append(
            da.from_array(
                _LevelView(slide, level),
                chunks=chunks,
                asarray=False,
                fancy=False,
                lock=False,
                name=f"stpredict-{id(slide):x}-L{level}",
                inline_array=True,
            )
        )
    return levels
