"""Marker-based tumour localisation: score, mask on the spot grid, contours as GeoJSON."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..vocabulary import DEFAULT_BREAST_PANEL, GeneIndex, marker_zscore
from .meta import ResolutionVerdict
from .prediction import Prediction

__all__ = ["TumorMask", "tumor_mask", "mask_polygons", "polygons_geojson", "DEFAULT_BREAST_PANEL"]


@dataclass(frozen=True)
class TumorMask:
    """Per-spot tumour score, the threshold used, and the cleaned mask on the spot grid.

    Attributes
    ----------
    mode : str
        ``"absolute"``: scores in the units of the model's training spots, threshold
        calibrated on training data (comparable between slides; a slide without tumour
        gets little or none). ``"slide"``: scores standardised over this slide and an
        automatic threshold per slide (Otsu), which always splits a slide in two.
    automatic : bool
        Whether the threshold was chosen by the software (calibrated or per slide)
        rather than given.
    excluded_out_of_domain : int
        Spots above the threshold not called tumour because they are out of domain.
    note : str
        Why this mode or threshold was used, when it is not the default.
    """

    score: np.ndarray  # per spot
    threshold: float
    automatic: bool
    markers: list[str]
    missing: list[str]
    raster: np.ndarray  # uint8 (rows, cols): 1 tumour, 0 not, off-tissue 0
    tissue: np.ndarray  # bool (rows, cols): cells with a spot
    mode: str = "slide"
    excluded_out_of_domain: int = 0
    note: str = ""

    @property
    def fraction(self) -> float:
        """Share of the tissue's grid cells called tumour."""
        return float(self.raster.sum() / max(1, self.tissue.sum()))

    def describe(self) -> str:
        """The threshold in words, e.g. ``0.33 (calibrated on training data, absolute units)``."""
        how = {
            ("absolute", True): "calibrated on training data, absolute units",
            ("absolute", False): "given, absolute units",
            ("slide", True): "automatic per slide (Otsu), units of this slide",
            ("slide", False): "given, units of this slide",
        }[(self.mode, self.automatic)]
        return f"{self.threshold:.2f} ({how})"


def model_panel(prediction: Prediction) -> list[str]:
    """The marker panel the model was shipped with, else the default breast panel."""
    panel = prediction.meta.model.markers
    return list(panel) if panel else list(DEFAULT_BREAST_PANEL)


def _used_markers(prediction: Prediction, markers) -> tuple[list[str], list[str]]:
    used, missing = GeneIndex(prediction.genes).split(list(markers))
    if not used:
        raise ValueError(f"none of the marker genes {list(markers)} is predicted by this model")
    return used, missing


def tumor_score(prediction: Prediction, markers, *, absolute: bool = False) -> tuple[np.ndarray, list[str], list[str]]:
    """Mean z-score of the predicted marker genes present.

    Parameters
    ----------
    absolute : bool
        Standardise each gene with the model's training-spot statistics (needs a
        calibrated model) instead of this slide's own mean and standard deviation.
    """
    used, missing = _used_markers(prediction, markers)
    x = np.column_stack([prediction.expression(g) for g in used])
    if absolute:
        cal = prediction.meta.tumour_calibration
        if cal is None or not cal.has_statistics:
            raise ValueError("this prediction's model carries no tumour calibration; use the per-slide score")
        index = GeneIndex(prediction.genes)
        idx = [index.position(g) for g in used]
        mean = np.asarray(cal.gene_mean, np.float32)[idx]
        sd = np.asarray(cal.gene_std, np.float32)[idx]
        return marker_zscore(x, mean, sd), used, missing
    return marker_zscore(x), used, missing


#: The tumour call is withheld on slides coarser than this many times the model's input
#: resolution. Measured on held-out section C2 downscaled (evaluation/experiments/
#: resolution): the bundled model's call found 63 % of the cancer spots at native
#: resolution, 54 % at 2.0 µm/px (2x its 1.0) and 48 % at 3.2 µm/px, where the tumour
#: share fell 11 points (results_pretrained.json); the model before pretraining went from
#: 75 % to 64 % and 35 % (results.json).
TUMOUR_MAX_MPP_RATIO = 2.5


def too_coarse_for_tumour(resolution: ResolutionVerdict) -> bool:
    """Whether a prediction's resolution verdict (``prediction.trust.resolution``) is
    beyond what the tumour call holds at (`TUMOUR_MAX_MPP_RATIO`)."""
    slide_mpp, model_mpp = resolution.slide_mpp, resolution.model_mpp
    return bool(slide_mpp and model_mpp and slide_mpp > TUMOUR_MAX_MPP_RATIO * model_mpp)


def tumor_mask(
    prediction: Prediction,
    markers=None,
    *,
    threshold: float | None = None,
    mode: str = "auto",
    include_out_of_domain: bool = False,
    min_island_spots: int = 3,
    max_hole_spots: int = 2,
) -> TumorMask:
    """Threshold the tumour score into a mask on the spot grid and clean it.

    Parameters
    ----------
    markers : sequence of str, optional
        Marker genes (default: the model's panel).
    threshold : float, optional
        Score threshold; default: the model's calibrated threshold (absolute mode), else
        automatic per slide.
    mode : {"auto", "absolute", "slide"}
        ``"absolute"``: marker z-scores in the training spots' units (needs a model with
        a tumour calibration); ``"slide"``: z-scores over this slide with Otsu's
        threshold per slide (every slide gets a tumour region); ``"auto"``: absolute
        when the model is calibrated, else per slide.
    include_out_of_domain : bool
        Call spots out of domain too. By default they are never called tumour (the
        model cannot judge tissue unlike its training data), and on a slide whose
        verdict is "out of domain" no spot is: there even the spots that pass the
        per-spot test are of a tissue the model does not know. Nor is any spot on a
        slide coarser than `TUMOUR_MAX_MPP_RATIO` times the model's input resolution
        (the note says so); True calls them anyway.
    min_island_spots, max_hole_spots : int
        Tumour islands with fewer spots are removed; holes with at most this many spots
        inside tumour are filled.
    """
    from skimage import filters, morphology

    if mode not in ("auto", "absolute", "slide"):
        raise ValueError(f"mode must be 'auto', 'absolute' or 'slide', got {mode!r}")
    if threshold is not None and not np.isfinite(threshold):
        raise ValueError(f"threshold must be a finite number, got {threshold!r}")
    markers = list(markers) if markers else model_panel(prediction)
    calibration = prediction.meta.tumour_calibration
    calibrated = calibration is not None and calibration.has_statistics
    note = ""
    if mode == "absolute" and not calibrated:
        raise ValueError(
            "mode='absolute' needs a model with a tumour calibration (this one has none; "
            "recalibrate it with 'stpredict train --calibrate')"
        )
    if mode == "auto":
        mode = "absolute" if calibrated else "slide"
        if not calibrated:
            note = "the model carries no tumour calibration: threshold chosen per slide"
    calibrated_threshold = None if calibration is None else calibration.threshold
    same_panel = calibration is not None and {m.upper() for m in markers} == {g.upper() for g in calibration.markers}
    if mode == "absolute" and threshold is None and (calibrated_threshold is None or not same_panel):
        # The calibrated threshold belongs to the calibrated panel; other markers get a per-slide one.
        mode = "slide"
        note = (
            "the calibrated threshold applies to the model's marker panel only: threshold chosen per slide"
            if calibrated_threshold is not None
            else "the model's calibration has no threshold: chosen per slide"
        )
    score, used, missing = tumor_score(prediction, markers, absolute=mode == "absolute")
    automatic = threshold is None
    cut: float
    if threshold is not None:
        cut = float(threshold)
    elif mode == "absolute" and calibrated_threshold is not None:
        cut = calibrated_threshold
    else:
        cut = float(filters.threshold_otsu(score)) if np.ptp(score) > 0 else float(score.max())
    called = score > cut
    ood = np.zeros(len(score), bool)
    if not include_out_of_domain and "out_of_domain" in prediction.adata.obs:
        ood = prediction.adata.obs["out_of_domain"].to_numpy(bool)
        if prediction.trust.domain.out_of_domain:
            ood = np.ones(len(score), bool)
            note = "the slide is out of domain: no spot is called tumour"
    resolution = prediction.trust.resolution
    if not include_out_of_domain and too_coarse_for_tumour(resolution):
        ood = np.ones(len(score), bool)
        note = (
            f"the slide's {resolution.slide_mpp:g} µm/px is coarser than the "
            f"{TUMOUR_MAX_MPP_RATIO * (resolution.model_mpp or 0):g} µm/px the tumour call holds at: "
            "no spot is called tumour (on a held-out section scanned at 3.2 µm/px the call found 48 % of the "
            "cancer spots, against 63 % at native resolution)"
        )
    excluded = int((called & ood).sum())
    called &= ~ood
    tumour = prediction.raster(called.astype(np.float32), "tumour", fill=0.0).raster > 0.5
    tissue = ~np.isnan(prediction.raster(np.ones(len(score), np.float32), "tissue").raster)
    ood_cells = prediction.raster(ood.astype(np.float32), "ood", fill=0.0).raster > 0.5
    tumour = morphology.remove_small_objects(tumour, max_size=max(0, min_island_spots - 1))
    # Hole filling must not bring back out-of-domain spots.
    tumour = morphology.remove_small_holes(tumour, max_size=max_hole_spots) & tissue & ~ood_cells
    return TumorMask(
        score,
        cut,
        automatic,
        used,
        missing,
        tumour.astype(np.uint8),
        tissue,
        mode=mode,
        excluded_out_of_domain=excluded,
        note=note,
    )


def spots_called(prediction: Prediction, raster: np.ndarray) -> np.ndarray:
    """Per spot: whether its grid cell is set in ``raster`` (the cleaned tumour mask)."""
    obs = prediction.adata.obs
    return np.asarray(raster)[obs["grid_row"].to_numpy(int), obs["grid_col"].to_numpy(int)] > 0


def add_tumour_columns(prediction: Prediction, mask: TumorMask) -> None:
    """Write the tumour call into the prediction's spot table, so an analyst can join the
    mask to the spots: ``obs["tumour_score"]`` (the score the threshold applies to) and
    ``obs["tumour"]`` (the spot's cell in the cleaned mask, as drawn and exported), with
    the threshold and mode in ``Prediction.meta.tumour_call``."""
    obs = prediction.adata.obs
    obs["tumour_score"] = np.asarray(mask.score, np.float32)
    obs["tumour"] = spots_called(prediction, mask.raster)
    call = {
        "threshold": float(mask.threshold),
        "mode": mask.mode,
        "markers": list(mask.markers),
        "automatic": bool(mask.automatic),
        "note": mask.note,
    }
    prediction.set_meta(prediction.meta.with_changes(tumour_call=call))


def mask_polygons(
    raster: np.ndarray, origin: tuple[float, float], stride: tuple[float, float]
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
        features.append(
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": coords},
                "properties": {
                    "objectType": "annotation",
                    "name": name,
                    "classification": {"name": "Tumor", "color": [200, 0, 0]},
                    **(properties or {}),
                },
            }
        )
    return {"type": "FeatureCollection", "features": features}


def _signed_area(ring: np.ndarray) -> float:
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * float(np.sum(x[:-1] * y[1:] - x[1:] * y[:-1]))
