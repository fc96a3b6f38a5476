"""The spot grid of a prediction: where each cell sits on the slide, written once.

A prediction's spots lie on a regular grid in level-0 pixels: cell ``(row, col)`` is
centred at ``origin + (col, row) * stride`` and covers ``origin + (col ± 0.5, row ± 0.5) *
stride``. Heatmaps, the tumour mask and its contours, the readout under the cursor, the
GeoTIFFs and the QuPath detections all take their geometry from one `GridGeometry`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["GridGeometry"]


@dataclass(frozen=True)
class GridGeometry:
    """A regular spot grid in level-0 pixels.

    Attributes
    ----------
    origin : tuple of float
        Level-0 ``(x, y)`` of the centre of cell ``(0, 0)``.
    stride : tuple of float
        Level-0 ``(x, y)`` distance between neighbouring cell centres.
    shape : tuple of int
        ``(rows, cols)``.
    """

    origin: tuple[float, float]
    stride: tuple[float, float]
    shape: tuple[int, int]

    def __post_init__(self) -> None:
        if len(self.origin) != 2 or len(self.stride) != 2 or len(self.shape) != 2:
            raise ValueError(f"a grid needs (x, y) origin and stride and (rows, cols) shape, got {self}")
        if not all(np.isfinite(v) and v > 0 for v in self.stride):
            raise ValueError(f"grid stride must be positive, got {self.stride}")

    @classmethod
    def of(cls, origin, stride, shape) -> GridGeometry:
        """From any sequences (lists read from ``.h5ad``, numpy arrays)."""
        (ox, oy), (sx, sy), (rows, cols) = origin, stride, shape
        return cls((float(ox), float(oy)), (float(sx), float(sy)), (int(rows), int(cols)))

    def cell_of(self, l0_xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(rows, cols)`` of the cells holding level-0 ``(x, y)`` points (may be off the grid)."""
        xy = np.atleast_2d(np.asarray(l0_xy, float))
        cols = np.floor((xy[:, 0] - self.origin[0]) / self.stride[0] + 0.5).astype(int)
        rows = np.floor((xy[:, 1] - self.origin[1]) / self.stride[1] + 0.5).astype(int)
        return rows, cols

    def inside(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Whether cells ``(rows, cols)`` are on the grid."""
        return (rows >= 0) & (rows < self.shape[0]) & (cols >= 0) & (cols < self.shape[1])

    def centre_of(self, row: float, col: float) -> tuple[float, float]:
        """Level-0 ``(x, y)`` of the centre of cell ``(row, col)`` (fractional cells too)."""
        return (self.origin[0] + col * self.stride[0], self.origin[1] + row * self.stride[1])

    def place(self, rows: np.ndarray, cols: np.ndarray, values: np.ndarray, fill: float = np.nan) -> np.ndarray:
        """A ``shape`` float32 raster with ``values`` at cells ``(rows, cols)`` and ``fill`` elsewhere."""
        out = np.full(self.shape, fill, np.float32)
        out[np.asarray(rows, int), np.asarray(cols, int)] = values
        return out

    def sample(self, raster: np.ndarray, l0_xy: np.ndarray) -> np.ndarray:
        """Values of a grid raster at level-0 points (the cell each falls in; NaN off the grid)."""
        rows, cols = self.cell_of(l0_xy)
        ok = self.inside(rows, cols)
        out = np.full(len(rows), np.nan, np.float32)
        out[ok] = raster[rows[ok], cols[ok]]
        return out

    def subdivided(self, factor: int) -> GridGeometry:
        """The grid of ``factor`` x ``factor`` sub-cells per cell (for drawing)."""
        f = int(factor)
        first = (0.5 / f) - 0.5  # the first sub-cell's centre, in cells from the first cell's
        return GridGeometry(
            self.centre_of(first, first),
            (self.stride[0] / f, self.stride[1] / f),
            (self.shape[0] * f, self.shape[1] * f),
        )

    def to_meta(self) -> dict[str, Any]:
        """Plain values as the prediction's metadata stores them."""
        return {
            "grid_origin_l0": [float(v) for v in self.origin],
            "grid_stride_l0": [float(v) for v in self.stride],
            "grid_shape": [int(v) for v in self.shape],
        }

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> GridGeometry:
        """From the prediction's metadata (``uns["stpredict"]``)."""
        return cls.of(meta["grid_origin_l0"], meta["grid_stride_l0"], meta["grid_shape"])
