"""A PNG overview: slide thumbnail, a heatmap over the tissue and the tumour contour."""

from __future__ import annotations

import numpy as np

__all__ = ["overview_image", "colormap"]

# Viridis at 9 anchors (matplotlib's values), interpolated: perceptually uniform.
_VIRIDIS = np.array([
    [68, 1, 84], [71, 44, 122], [59, 81, 139], [44, 113, 142], [33, 144, 141],
    [39, 173, 129], [92, 200, 99], [170, 220, 50], [253, 231, 37]], np.float32)


def colormap(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Map values to viridis RGB uint8 (NaN -> 0)."""
    t = np.clip((np.nan_to_num(values, nan=lo) - lo) / max(hi - lo, 1e-12), 0, 1) * (len(_VIRIDIS) - 1)
    i = np.minimum(t.astype(int), len(_VIRIDIS) - 2)
    f = (t - i)[..., None]
    return ((1 - f) * _VIRIDIS[i] + f * _VIRIDIS[i + 1]).astype(np.uint8)


def overview_image(slide, heatmap, tumor_raster: np.ndarray | None = None, *, max_size: int = 1024,
                   alpha: float = 0.6) -> np.ndarray:
    """Thumbnail with ``heatmap`` blended over its spots and the tumour mask outlined in red."""
    from skimage.segmentation import find_boundaries

    thumb = slide.thumbnail(max_size).astype(np.float32)
    h, w = thumb.shape[:2]
    l0_x = (np.arange(w) + 0.5) * slide.dimensions[0] / w
    l0_y = (np.arange(h) + 0.5) * slide.dimensions[1] / h
    cols = np.floor((l0_x - heatmap.l0_origin[0]) / heatmap.l0_stride[0] + 0.5).astype(int)
    rows = np.floor((l0_y - heatmap.l0_origin[1]) / heatmap.l0_stride[1] + 0.5).astype(int)
    rr, cc = np.meshgrid(rows, cols, indexing="ij")
    inside = (rr >= 0) & (rr < heatmap.raster.shape[0]) & (cc >= 0) & (cc < heatmap.raster.shape[1])
    values = np.full((h, w), np.nan, np.float32)
    values[inside] = heatmap.raster[rr[inside], cc[inside]]
    valid = ~np.isnan(values)
    if valid.any():
        lo, hi = np.nanpercentile(values, [2, 98])
        thumb[valid] = (1 - alpha) * thumb[valid] + alpha * colormap(values[valid], lo, hi)
    out = thumb.astype(np.uint8)
    if tumor_raster is not None:
        mask = np.zeros((h, w), bool)
        mask[inside] = tumor_raster[rr[inside], cc[inside]] > 0
        edge = find_boundaries(mask, mode="inner")
        out[edge] = (230, 0, 0)
    return out
