"""Lazy dask multiscale arrays of a `Slide`, for napari.

One dask array per pyramid level, chunks aligned to the stored tiles, each chunk read
with `Slide.read_region` only when napari displays it.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from .base import Slide

__all__ = ["CHUNK_CACHE", "LevelArray", "level_chunks", "prefetch_first_view", "slide_pyramid"]

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
    """``(height, width)`` of the chunks of one level: whole tiles, about 512-2048 px."""
    tile_w, tile_h = slide.tile_size(level)
    width, height = slide.level_dimensions[level]
    return _fit(tile_h, height), _fit(tile_w, width)


class _ChunkCache:
    """Decoded chunks of every open slide level, least recently used dropped first.

    napari re-slices the visible region on every pan and zoom; whole chunks kept here
    make a pan read only the chunks that came into view (what napari's dask cache did
    for the dask arrays this module used to return).
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._chunks: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._pending: dict[tuple, Future] = {}  # chunks being read ahead (`prefetch`)
        self._bytes = 0
        self._lock = threading.Lock()

    def has(self, key: tuple) -> bool:
        """Whether the chunk is here or being read ahead."""
        with self._lock:
            return key in self._chunks or key in self._pending

    def get(self, key: tuple, read) -> np.ndarray:
        with self._lock:
            chunk = self._chunks.get(key)
            if chunk is not None:
                self._chunks.move_to_end(key)
                return chunk
            pending = self._pending.get(key)
        if pending is not None:
            with contextlib.suppress(Exception):  # a failed read-ahead: read here, and raise here
                return pending.result()
        chunk = read()  # outside the lock: napari may slice two layers at once
        self._store(key, chunk)
        return chunk

    def prefetch(self, key: tuple, read, pool: ThreadPoolExecutor) -> None:
        """Start reading a chunk in ``pool`` unless it is here or on its way; `get` waits
        for it instead of reading it twice."""
        with self._lock:
            if key in self._chunks or key in self._pending:
                return
            # Submitted under the lock: `_fill` stores (under the lock) only after the
            # future is registered here.
            self._pending[key] = pool.submit(self._fill, key, read)

    def read_now(self, key: tuple, read) -> np.ndarray:
        """Read and keep a chunk without waiting for a read-ahead of it (for tasks that run
        in the reading pool themselves, where waiting on a queued task could deadlock)."""
        chunk = read()
        self._store(key, chunk)
        return chunk

    def _fill(self, key: tuple, read) -> np.ndarray:
        try:
            return self.read_now(key, read)
        finally:
            with self._lock:
                self._pending.pop(key, None)

    def _store(self, key: tuple, chunk: np.ndarray) -> None:
        with self._lock:
            if key not in self._chunks:
                self._chunks[key] = chunk
                self._bytes += chunk.nbytes
                while self._bytes > self.max_bytes and len(self._chunks) > 1:
                    _, old = self._chunks.popitem(last=False)
                    self._bytes -= old.nbytes


#: Shared by all open slides: 256 MB of decoded RGB (about 20 screens of 1,280 x 1,024 at
#: chunk granularity).
CHUNK_CACHE = _ChunkCache(256 << 20)
_ARRAY_IDS = itertools.count()
_POOL: list[ThreadPoolExecutor] = []
_POOL_LOCK = threading.Lock()


def _reading_pool() -> ThreadPoolExecutor:
    """Threads that read the chunks of one view side by side (one per core, 2 to 4)."""
    with _POOL_LOCK:
        if not _POOL:
            workers = min(4, max(2, os.cpu_count() or 2))
            _POOL.append(ThreadPoolExecutor(max_workers=workers, thread_name_prefix="stpredict-view"))
        return _POOL[0]


def _bounds(key, length: int) -> tuple[int, int, int, bool]:
    """``(start, stop, step, squeeze)`` of one index along an axis of ``length``."""
    if isinstance(key, slice):
        start, stop, step = key.indices(length)
        if step < 1:
            raise IndexError("slide levels are read with positive steps only")
        return start, max(start, stop), step, False
    index = int(key)
    index = index + length if index < 0 else index
    if not 0 <= index < length:
        raise IndexError(f"index {key} is out of bounds for an axis of {length}")
    return index, index + 1, 1, True


class LevelArray:
    """One pyramid level as a lazy array ``(height, width, 3)`` uint8, read in chunks.

    Has what napari needs of an array (``shape``, ``dtype``, ``ndim``, slicing with
    slices, steps and integers, ``np.asarray``): a region is assembled from the whole
    chunks it touches (`level_chunks`: stored tiles, about 512-2048 px), each read once
    with `Slide.read_level_region` and kept in `CHUNK_CACHE`. Without dask, whose import
    alone cost a fresh napari session a quarter of a second before the first slide showed.
    """

    def __init__(self, slide: Slide, level: int) -> None:
        self._slide = slide
        self._level = level
        width, height = slide.level_dimensions[level]
        self.shape = (height, width, 3)
        self.dtype = np.dtype(np.uint8)
        self.ndim = 3
        self.chunksize = level_chunks(slide, level)
        self._key = (next(_ARRAY_IDS), level)  # never reused, unlike id() of a closed slide

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"LevelArray({self._slide.name!r}, level={self._level}, shape={self.shape})"

    def _chunk(self, row: int, col: int) -> np.ndarray:
        return CHUNK_CACHE.get((*self._key, row, col), self._chunk_reader(row, col))

    def prefetch(self) -> None:
        """Start reading the whole level in the background (`CHUNK_CACHE.prefetch`)."""
        ch, cw = self.chunksize
        for row in range(-(-self.shape[0] // ch)):
            for col in range(-(-self.shape[1] // cw)):
                CHUNK_CACHE.prefetch((*self._key, row, col), self._chunk_reader(row, col), _reading_pool())

    def _chunk_reader(self, row: int, col: int):
        ch, cw = self.chunksize
        y0, x0 = row * ch, col * cw
        h, w = min(ch, self.shape[0] - y0), min(cw, self.shape[1] - x0)
        return lambda: self._slide.read_level_region(self._level, (x0, y0), (w, h))

    def _region(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        ch, cw = self.chunksize
        out = np.empty((y1 - y0, x1 - x0, 3), np.uint8)
        cells = [(row, col) for row in range(y0 // ch, -(-y1 // ch)) for col in range(x0 // cw, -(-x1 // cw))]
        missing = [cell for cell in cells if not CHUNK_CACHE.has((*self._key, *cell))]
        read: dict[tuple[int, int], np.ndarray] = {}
        if len(missing) > 1:
            # A first view or a zoom needs several chunks: decoders release the GIL, so
            # reading them side by side shows the view sooner (the sample's first view
            # reads 4 chunks of level 3).
            read = dict(
                zip(
                    missing,
                    _reading_pool().map(
                        lambda cell: CHUNK_CACHE.read_now((*self._key, *cell), self._chunk_reader(*cell)), missing
                    ),
                )
            )
        for row, col in cells:
            chunk = read[(row, col)] if (row, col) in read else self._chunk(row, col)
            cy0, cx0 = row * ch, col * cw
            ya, yb = max(y0, cy0), min(y1, cy0 + chunk.shape[0])
            xa, xb = max(x0, cx0), min(x1, cx0 + chunk.shape[1])
            out[ya - y0 : yb - y0, xa - x0 : xb - x0] = chunk[ya - cy0 : yb - cy0, xa - cx0 : xb - cx0]
        return out

    def __getitem__(self, key) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        if any(k is Ellipsis for k in key):
            i = key.index(Ellipsis)
            key = key[:i] + (slice(None),) * (3 - len(key) + 1) + key[i + 1 :]
        if len(key) > 3:
            raise IndexError(f"too many indices for a slide level: {key!r}")
        key = key + (slice(None),) * (3 - len(key))
        (y0, y1, ystep, ysq), (x0, x1, xstep, xsq) = _bounds(key[0], self.shape[0]), _bounds(key[1], self.shape[1])
        region = self._region(y0, y1, x0, x1) if y1 > y0 and x1 > x0 else np.zeros((y1 - y0, x1 - x0, 3), np.uint8)
        region = region[::ystep, ::xstep][:, :, key[2]]
        if xsq:
            region = region[:, 0]
        if ysq:
            region = region[0]
        return region

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        whole = self[:, :]
        return whole if dtype is None else whole.astype(dtype)


def slide_pyramid(slide: Slide) -> list[LevelArray]:
    """Return the slide as a list of lazy level arrays ``(height, width, 3)``, finest first.

    Nothing is read until a region is sliced (`LevelArray`).
    """
    return [LevelArray(slide, level) for level in range(slide.level_count)]


#: A level napari fits in a window is at least this wide and high on a typical screen
#: (napari draws the coarsest level larger than its canvas in both directions).
FIRST_VIEW_MIN_SIDE = 768
#: Levels larger than this are not read ahead (a slide without a pyramid).
FIRST_VIEW_MAX_PIXELS = 4_000_000


def prefetch_first_view(levels: list[LevelArray]) -> None:
    """Start reading, in the background, the levels napari draws when a slide first shows:
    the coarsest (its thumbnail) and the coarsest at least `FIRST_VIEW_MIN_SIDE` px on
    both sides (the whole slide fitted in a window), so their decoding overlaps napari's
    building of the layer. Bounded to `FIRST_VIEW_MAX_PIXELS` each; a guess off by a level
    costs one small level's read."""
    if not levels:
        return
    wanted = {len(levels) - 1}
    fitted = [i for i, lv in enumerate(levels) if min(lv.shape[:2]) >= FIRST_VIEW_MIN_SIDE]
    if fitted:
        wanted.add(fitted[-1])
    for i in sorted(wanted, reverse=True):
        if levels[i].shape[0] * levels[i].shape[1] <= FIRST_VIEW_MAX_PIXELS:
            levels[i].prefetch()
