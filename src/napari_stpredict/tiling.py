"""The spot grid: where patches are cut from a slide, in level-0 pixels.

Pure numpy. A regular grid with a given stride (in µm) covers the tissue; a cell is
kept when the patch centred on it is at least half tissue (by the tissue mask). Grid
cell ``(row, col)`` has its centre at ``origin + (col * stride_x, row * stride_y)`` in
level-0 pixels; rasters on the grid (`grid_` frame) place pixel ``(row, col)`` there.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import TissueMaskError

__all__ = ["SpotGrid", "spot_grid", "roi_mask"]


@dataclass(frozen=True)
class SpotGrid:
    """Spot centres on a regular grid.

    Attributes
    ----------
    l0_centres : numpy.ndarray
        ``(n, 2)`` float ``(x, y)`` centres in level-0 pixels.
    rows, cols : numpy.ndarray
        Grid indices of each spot.
    origin : tuple of float
        Level-0 ``(x, y)`` centre of grid cell ``(0, 0)``.
    stride : tuple of float
        Level-0 pixels between neighbouring cells along x and y.
    shape : tuple of int
        Grid ``(rows, cols)``.
    patch_l0 : tuple of float
        Patch ``(width, height)`` in level-0 pixels.
    tissue_fraction : numpy.ndarray
        Fraction of each patch on tissue.
    """

    l0_centres: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    origin: tuple[float, float]
    stride: tuple[float, float]
    shape: tuple[int, int]
    patch_l0: tuple[float, float]
    tissue_fraction: np.ndarray

    def __len__(self) -> int:
        return len(self.l0_centres)

    def raster(self, values: np.ndarray, fill: float = np.nan) -> np.ndarray:
        """Place per-spot values on the grid: ``(rows, cols)`` float32, ``fill`` elsewhere."""
        out = np.full(self.shape, fill, np.float32)
        out[self.rows, self.cols] = values
        return out


def roi_mask(mask_shape: tuple[int, int], l0_per_th: tuple[float, float], roi) -> np.ndarray:
    """Rasterise a region of interest onto the thumbnail grid.

    ``roi`` is a box ``(x0, y0, x1, y1)`` or a polygon ``[(x, y), ...]`` (or a list of
    polygons), in level-0 pixels.
    """
    from skimage.draw import polygon as draw_polygon

    out = np.zeros(mask_shape, bool)
    for poly in roi_polygons(roi):
        th = poly / np.asarray(l0_per_th, float)
        if len(th) > _MAX_PLAIN_VERTICES:
            # skimage tests every pixel against every edge: a 200,000-vertex region would
            # take minutes. A scan-line fill costs one crossing per edge and row it spans.
            out |= _scanline_fill(_drop_repeats(np.round(th * 4) / 4), mask_shape)
            continue
        rr, cc = draw_polygon(th[:, 1], th[:, 0], shape=mask_shape)
        out[rr, cc] = True
    return out


#: Polygons with more vertices are filled by scan lines (`_scanline_fill`).
_MAX_PLAIN_VERTICES = 1_000
#: Row crossings a region may have on the thumbnail (about 400 MB of work arrays).
_MAX_CROSSINGS = 20_000_000


def _drop_repeats(points: np.ndarray) -> np.ndarray:
    keep = np.ones(len(points), bool)
    keep[1:] = np.any(points[1:] != points[:-1], axis=1)
    return points[keep]


def _scanline_fill(th: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Even-odd fill of a closed polygon in thumbnail ``(x, y)`` pixels, pixel centres
    sampled as `skimage.draw.polygon` samples them (row ``r`` is ``y == r``)."""
    height, width = shape
    x0, y0 = th[:, 0], th[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    flat = y0 == y1
    x0, y0, x1, y1 = x0[~flat], y0[~flat], x1[~flat], y1[~flat]
    low, high = np.minimum(y0, y1), np.maximum(y0, y1)
    # Rows r with low <= r < high (half open: a vertex is crossed once).
    first = np.clip(np.ceil(low), 0, height).astype(np.int64)
    stop = np.clip(np.ceil(high), 0, height).astype(np.int64)
    counts = np.maximum(stop - first, 0)
    total = int(counts.sum())
    if total > _MAX_CROSSINGS:
        raise ValueError(
            f"roi: the region's outline crosses the slide's rows {total:,} times, more than it can show; "
            "simplify it (e.g. QuPath's Simplify shape)"
        )
    edge = np.repeat(np.arange(len(counts)), counts)
    rows = first[edge] + (np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts))
    xs = x0[edge] + (rows - y0[edge]) * (x1[edge] - x0[edge]) / (y1[edge] - y0[edge])
    order = np.lexsort((xs, rows))
    rows, xs = rows[order], xs[order]
    out = np.zeros(shape, bool)
    # Crossings pair up within each row: fill between the 1st and 2nd, 3rd and 4th, ...
    starts, ends, pair_rows = xs[0::2], xs[1::2], rows[0::2]
    left = np.clip(np.ceil(starts), 0, width).astype(np.int64)
    right = np.clip(np.floor(ends) + 1, 0, width).astype(np.int64)
    for row, a, b in zip(pair_rows.tolist(), left.tolist(), right.tolist(), strict=True):
        if b > a:
            out[row, a:b] = True
    return out


def roi_polygons(roi) -> list[np.ndarray]:
    """A region of interest as a list of ``(n, 2)`` level-0 ``(x, y)`` polygons, checked.

    ``roi`` is a box ``(x0, y0, x1, y1)``, one polygon ``[(x, y), ...]`` or a list of
    polygons.

    Raises
    ------
    ValueError
        Naming what is wrong: an empty region, a polygon of fewer than 3 points or of
        another shape, a coordinate that is not a finite number, a box with x1 <= x0.
    """
    if roi is None or (hasattr(roi, "__len__") and len(roi) == 0):
        raise ValueError("roi is empty: give a box (x0, y0, x1, y1) or polygons of level-0 (x, y) points")
    # A box or one polygon is a flat list of numbers or of points; several polygons are a
    # list of point lists (which may differ in length, so they cannot be one array).
    try:
        arr = np.asarray(roi, dtype=float) if not isinstance(roi, list) or np.ndim(roi[0]) <= 1 else None
        if arr is not None and arr.ndim == 1 and arr.size == 4:
            x0, y0, x1, y1 = arr
            if not (x1 > x0 and y1 > y0):
                raise ValueError(f"roi box must have x1 > x0 and y1 > y0, got {arr.tolist()}")
            polygons = [np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])]
        elif arr is not None and arr.ndim == 2:
            polygons = [arr]
        else:
            polygons = [np.asarray(p, float) for p in roi]
    except (TypeError, ValueError) as exc:
        if "roi" in str(exc):
            raise
        raise ValueError(f"roi must be a box (x0, y0, x1, y1) or polygons of (x, y) points ({exc})") from exc
    for poly in polygons:
        if poly.ndim != 2 or poly.shape[1] != 2 or len(poly) < 3:
            raise ValueError(f"roi polygon must be (n >= 3, 2) level-0 (x, y) points, got shape {poly.shape}")
        if not np.isfinite(poly).all():
            raise ValueError("roi has a coordinate that is not a finite number (NaN or infinity)")
    return polygons


def spot_grid(
    mask: np.ndarray,
    l0_per_th: tuple[float, float],
    mpp: tuple[float, float],
    *,
    patch_um: float,
    stride_um: float | None = None,
    min_tissue: float = 0.5,
    slide_name: str = "slide",
) -> SpotGrid:
    """Lay a spot grid over a tissue mask.

    Parameters
    ----------
    mask : numpy.ndarray
        Boolean tissue mask on the thumbnail (`th_` frame), possibly intersected with a
        region of interest.
    l0_per_th : tuple of float
        Level-0 pixels per thumbnail pixel along x and y.
    mpp : tuple of float
        Level-0 µm per pixel along x and y.
    patch_um : float
        Patch width in µm (the model's contract).
    stride_um : float, optional
        Distance between spot centres in µm (default: ``patch_um``; smaller gives
        smoother maps and more spots).
    min_tissue : float
        Minimum fraction of a patch on tissue.
    """
    stride_um = patch_um if stride_um is None else float(stride_um)
    if not stride_um > 0:
        raise ValueError(f"stride_um must be positive, got {stride_um!r}")
    if stride_um < patch_um / 8:
        raise ValueError(
            f"stride_um={stride_um:g} is below 1/8 of the {patch_um:g} µm patch; "
            f"the smallest allowed is {patch_um / 8:g} µm"
        )
    if not mask.any():
        raise TissueMaskError(f"{slide_name}: no tissue (or nothing inside the region of interest) to predict on")
    stride = (stride_um / mpp[0], stride_um / mpp[1])
    patch = (patch_um / mpp[0], patch_um / mpp[1])
    rr, cc = np.nonzero(mask)
    # Tissue bounding box in level-0 pixels, then cells every stride across it.
    x_lo, x_hi = cc.min() * l0_per_th[0], (cc.max() + 1) * l0_per_th[0]
    y_lo, y_hi = rr.min() * l0_per_th[1], (rr.max() + 1) * l0_per_th[1]
    n_cols = int(np.ceil((x_hi - x_lo) / stride[0]))
    n_rows = int(np.ceil((y_hi - y_lo) / stride[1]))
    origin = (x_lo + stride[0] / 2, y_lo + stride[1] / 2)
    rows, cols = np.mgrid[0:n_rows, 0:n_cols]
    cx = origin[0] + cols.ravel() * stride[0]
    cy = origin[1] + rows.ravel() * stride[1]
    fraction = _patch_tissue_fraction(mask, l0_per_th, cx, cy, patch)
    keep = fraction >= min_tissue
    return SpotGrid(
        l0_centres=np.column_stack([cx[keep], cy[keep]]),
        rows=rows.ravel()[keep],
        cols=cols.ravel()[keep],
        origin=origin,
        stride=stride,
        shape=(n_rows, n_cols),
        patch_l0=patch,
        tissue_fraction=fraction[keep].astype(np.float32),
    )


def _patch_tissue_fraction(mask, l0_per_th, cx, cy, patch) -> np.ndarray:
    """Fraction of mask pixels inside each patch footprint, by a summed-area table."""
    h, w = mask.shape
    sat = np.zeros((h + 1, w + 1), np.int64)
    sat[1:, 1:] = mask.astype(np.int64).cumsum(0).cumsum(1)

    def idx(v, scale, limit):
        return np.clip(np.round(v / scale).astype(int), 0, limit)

    c0 = idx(cx - patch[0] / 2, l0_per_th[0], w)
    c1 = idx(cx + patch[0] / 2, l0_per_th[0], w)
    r0 = idx(cy - patch[1] / 2, l0_per_th[1], h)
    r1 = idx(cy + patch[1] / 2, l0_per_th[1], h)
    area = np.maximum((c1 - c0) * (r1 - r0), 1)
    inside = sat[r1, c1] - sat[r0, c1] - sat[r1, c0] + sat[r0, c0]
    return inside / area
