"""Marker-based tumour localisation: score, mask on the spot grid, contours as GeoJSON."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .prediction import Prediction

__all__ = ["TumorMask", "tumor_mask", "mask_polygons", "polygons_geojson", "DEFAULT_BREAST_PANEL"]

#: Used only when a model carries no panel chosen on its training data.
DEFAULT_BREAST_PANEL = ("ERBB2", "GRB7", "EPCAM", "TACSTD2", "SCD", "MUCL1", "CD24", "KRT19")


@dataclass(frozen=True)
class TumorMask:
    """Per-spot tumour score, the threshold used, and the cleaned mask on the spot grid."""

    score: np.ndarray  # per spot
    threshold: float
    automatic: bool
    markers: list[str]
    missing: list[str]
    raster: np.ndarray  # uint8 (rows, cols): 1 tumour, 0 not, off-tissue 0
    tissue: np.ndarray  # bool (rows, cols): cells with a spot


def model_panel(prediction: Prediction) -> list[str]:
    """The marker panel the model was shipped with, else the default breast panel."""
    panel = prediction.meta.get("model", {}).get("markers") or []
    return list(panel) if panel else list(DEFAULT_BREAST_PANEL)


def tumor_score(prediction: Prediction, markers) -> tuple[np.ndarray, list[str], list[str]]:
    """Mean z-score over the slide's spots of the predicted marker genes present."""
    upper = {g.upper(): g for g in prediction.genes}
    used = [upper[m.upper()] for m in markers if m.upper() in upper]
    missing = [m for m in markers if m.upper() not in upper]
    if not used:
        raise ValueError(f"none of the marker genes {list(markers)} is predicted by this model")
    x = np.column_stack([prediction.expression(g) for g in used])
    sd = x.std(0)
    z = (x - x.mean(0)) / np.where(sd > 1e-8, sd, 1.0)
    return z.mean(1), used, missing


def tumor_mask(prediction: Prediction, markers=None, *, threshold: float | None = None,
               min_island_spots: int = 3, max_hole_spots: int = 2) -> TumorMask:
    """Threshold the tumour score into a mask on the spot grid and clean it.

    Parameters
    ----------
    markers : sequence of str, optional
        Marker genes (default: the model's panel).
    threshold : float, optional
        Score threshold; default automatic (Otsu's method on the slide's scores).
    min_island_spots, max_hole_spots : int
        Tumour islands with fewer spots are removed; holes with at most this many spots
        inside tumour are filled.
    """
    from skimage import filters, morphology

    markers = list(markers) if markers else model_panel(prediction)
    score, used, missing = tumor_score(prediction, markers)
    automatic = threshold is None
    if automatic:
        threshold = float(filters.threshold_otsu(score)) if np.ptp(score) > 0 else float(score.max())
    tumour = prediction.raster((score > threshold).astype(np.float32), "tumour", fill=0.0).raster > 0.5
    tissue = ~np.isnan(prediction.raster(np.ones(len(score), np.float32), "tissue").raster)
    tumour = morphology.remove_small_objects(tumour, max_size=max(0, min_island_spots - 1))
    tumour = morphology.remove_small_holes(tumour, max_size=max_hole_spots) & tissue
    return TumorMask(score, float(threshold), automatic, used, missing, tumour.astype(np.uint8), tissue)


def mask_polygons(raster: np.ndarray, origin: tuple[float, float], stride: tuple[float, float]
                  ) -> list[list[np.ndarray]]:
    """Polygons (outer ring, then hole rings) around each connected region of a grid mask.

    Rings are closed ``(n, 2)`` arrays of level-0 ``(x, y)``; a grid cell covers
    ``origin + (col +- 0.5, row +- 0.5) * stride``, so the polygons enclose whole cells.
    """
    from scipy import ndimage
    from skimage import measure

    def ring(component: np.ndarray) -> np.ndarray:
        # Upsample so the 0.5-level contour runs along cell edges, then map to level 0.
        up = np.kron(component.astype(np.uint8), np.ones((2, 2), np.uint8))
        padded = np.pad(up, 1)
        contour = max(measure.find_contours(padded, 0.5), key=len)
        rows = (contour[:, 0] - 1 + 0.5) / 2 - 0.5
        cols = (contour[:, 1] - 1 + 0.5) / 2 - 0.5
        pts = np.column_stack([origin[0] + cols * stride[0], origin[1] + rows * stride[1]])
        simplified = measure.approximate_polygon(pts, tolerance=0.05 * min(stride))
        if not np.allclose(simplified[0], simplified[-1]):
            simplified = np.vstack([simplified, simplified[:1]])
        return simplified

    labels, n = ndimage.label(raster > 0)
    polygons = []
    for i in range(1, n + 1):
        component = labels == i
        filled = ndimage.binary_fill_holes(component)
        rings = [ring(filled)]
        holes, n_holes = ndimage.label(filled & ~component)
        rings += [ring(holes == j) for j in range(1, n_holes + 1)]
        polygons.append(rings)
    return polygons


def polygons_geojson(polygons, *, name: str = "Tumour (predicted)", properties: dict[str, Any] | None = None) -> dict:
    """A GeoJSON FeatureCollection QuPath imports as annotations (coordinates: level-0 pixels)."""
    features = []
    for rings in polygons:
        coords = []
        for k, r in enumerate(rings):
            pts = r.tolist()
            # GeoJSON: exterior counter-clockwise, holes clockwise (in a y-up frame).
            area = _signed_area(r)
            if (k == 0 and area < 0) or (k > 0 and area > 0):
                pts = pts[::-1]
            coords.append(pts)
        features.append({
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": coords},
            "properties": {"objectType": "annotation", "name": name,
                           "classification": {"name": "Tumor", "color": [200, 0, 0]}, **(properties or {})},
        })
    return {"type": "FeatureCollection", "features": features}


def _signed_area(ring: np.ndarray) -> float:
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * float(np.sum(x[:-1] * y[1:] - x[1:] * y[:-1]))
