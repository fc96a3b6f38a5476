"""napari layer data for predictions, without Qt: ``(data, kwargs, layer_type)`` tuples.

Every layer takes its transform from a `Placement`: the slide layer's own (so layers lie
on the tissue whatever reader opened the slide), or by default the frame this plugin's
reader gives a slide (µm when its mpp is known, level-0 pixels otherwise). Rasters on
the spot grid are placed with scale/translate, never upsampled; points and shapes hold
level-0 coordinates.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .inference.colours import colour_limits
from .inference.prediction import Prediction
from .inference.tumor import TumorMask, mask_polygons
from .placement import Placement
from .vocabulary import UNITS, log1p_cp10k

__all__ = [
    "colour_limits",
    "heatmap_layer",
    "confidence_layer",
    "tumor_labels_layer",
    "tumor_contour_layer",
    "measured_points_layer",
    "domain_layer",
]


def _grid(prediction: Prediction, placement: Placement | None) -> dict[str, Any]:
    return (placement or Placement.of_prediction(prediction)).grid_kwargs(prediction)


def _provenance(prediction: Prediction, **extra) -> dict[str, Any]:
    meta = prediction.meta
    return {
        "stpredict": {
            "kind": extra.pop("kind"),
            "model": meta.model.name,
            "trained_on": list(meta.model.trained_on),
            "slide": meta.slide.name,
            "patch_um": meta.patch_um,
            "stride_um": meta.stride_um,
            "l0_origin": list(meta.grid.origin),
            "l0_stride": list(meta.grid.stride),
            "mpp": list(meta.mpp),
            "domain": meta.trust.domain.summary(),
            "note": "Research use only; not for diagnosis.",
            **extra,
        }
    }


#: Sub-cells per spot (along each axis) of a drawn heatmap; odd, so the centre one is the spot.
DISPLAY_OVERSAMPLE = 5


def heatmap_layer(
    prediction: Prediction,
    gene: str,
    *,
    opacity: float = 0.65,
    placement: Placement | None = None,
    fixed_limits: bool = True,
    show_out_of_domain: bool = False,
) -> tuple:
    """Image layer of one gene's predicted expression (viridis; limits from `colour_limits`).

    Out-of-domain spots are left out of the map (transparent), and on a slide that is out
    of domain as a whole so is every spot: a map of tissue the model never saw would read
    as a confident one (normal skin drawn in top-of-scale yellow reads as "maximal HER2").
    ``show_out_of_domain`` draws them anyway; the layer's metadata says which was done.
    """
    heat = prediction.heatmap(gene)
    lo, hi = colour_limits(prediction, gene, fixed=fixed_limits)
    hidden = 0 if show_out_of_domain else _hide_out_of_domain(prediction, heat.raster)
    # Smooth at a glance instead of a mosaic of 112 µm blocks, without a finer stride (which
    # lowered ERBB2 r at the sample's measured spots from 0.32 to 0.28 at 56 µm and took 3.4x
    # as long; see the README): interpolated between spot centres here, on sub-cells drawn
    # as they are, so that every edge cell is whole (on-screen interpolation blanks the outer
    # half of each) and the map, overview.png and the GeoTIFF agree cell for cell.
    data, origin, stride = heat.display_raster(DISPLAY_OVERSAMPLE)
    kwargs = {
        "name": f"{heat.name} (predicted)",
        **(placement or Placement.of_prediction(prediction)).layer_kwargs(origin, stride),
        "colormap": "viridis",
        "contrast_limits": (float(lo), float(hi)),
        "opacity": opacity,
        "blending": "translucent",
        "interpolation2d": "nearest",
        "metadata": _provenance(
            prediction,
            kind="heatmap",
            gene=heat.name,
            units=UNITS,
            hidden_out_of_domain=hidden,
            display_oversample=DISPLAY_OVERSAMPLE,
        ),
    }
    return data, kwargs, "image"


def spot_values_of_display(data: np.ndarray, oversample: int) -> np.ndarray:
    """The spot-grid raster of a heatmap layer's data (`heatmap_layer` draws each spot as
    ``oversample`` x ``oversample`` sub-cells; the centre one is the spot's value)."""
    f = int(oversample or 1)
    data = np.asarray(data)
    return data if f == 1 else data[f // 2 :: f, f // 2 :: f]


def _hide_out_of_domain(prediction: Prediction, raster: np.ndarray) -> int:
    """Blank the out-of-domain spots' cells of ``raster`` in place (every spot's on a slide
    out of domain as a whole); returns how many spots were blanked."""
    obs = prediction.adata.obs
    if "out_of_domain" not in obs:
        return 0
    hide = np.ones(len(obs), bool) if prediction.trust.domain.out_of_domain else obs["out_of_domain"].to_numpy(bool)
    raster[obs["grid_row"].to_numpy(int)[hide], obs["grid_col"].to_numpy(int)[hide]] = np.nan
    return int(hide.sum())


def confidence_layer(prediction: Prediction, placement: Placement | None = None) -> tuple:
    """Image layer of each spot's similarity to the reference bank (low = unlike the training data).

    Contrast runs from the 5th to the 50th percentile of the training spots' own
    similarity, so dark means "less like the training data than 95 % of it".
    """
    heat = prediction.raster(prediction.confidence, "confidence", units="cosine similarity to the reference bank")
    ref = prediction.meta.model.confidence_reference
    finite = heat.raster[np.isfinite(heat.raster)]
    lo = float(ref.get("q05", finite.min() if finite.size else 0.0))
    hi = float(ref.get("q50", finite.max() if finite.size else 1.0))
    kwargs = {
        "name": "confidence",  # what it means: the canvas caption and README
        **_grid(prediction, placement),
        "colormap": "magma",
        "contrast_limits": (lo, max(hi, lo + 1e-3)),
        "opacity": 0.6,
        "visible": False,
        "interpolation2d": "nearest",
        "metadata": _provenance(prediction, kind="confidence", units=heat.units),
    }
    return heat.raster, kwargs, "image"


def domain_layer(prediction: Prediction, placement: Placement | None = None) -> tuple:
    """Image layer of each spot's out-of-domain distance, in units of the model's
    threshold (1 = the threshold; above it the spot is unlike the training data and is
    never called tumour)."""
    threshold = prediction.trust.domain.threshold
    if threshold is None:
        raise ValueError("this prediction's model carries no out-of-domain calibration: no out-of-domain map")
    values = prediction.adata.obs["domain_distance"].to_numpy(np.float32) / threshold
    heat = prediction.raster(values, "out of domain", units="distance to the training images / threshold")
    kwargs = {
        "name": "out of domain",
        **_grid(prediction, placement),
        "colormap": "inferno",
        "contrast_limits": (0.5, 1.5),
        "opacity": 0.6,
        "visible": False,
        "interpolation2d": "nearest",
        "metadata": _provenance(prediction, kind="out_of_domain", units=heat.units),
    }
    return heat.raster, kwargs, "image"


def tumor_labels_layer(prediction: Prediction, mask: TumorMask, placement: Placement | None = None) -> tuple:
    """Labels layer of the tumour mask on the spot grid (1 = tumour)."""
    # Hidden at first: drawn over a heatmap it would change the colours the colour bar explains;
    # the contour shows the same region without hiding them.
    kwargs = {
        "name": "tumour mask",
        **_grid(prediction, placement),
        "opacity": 0.45,
        "visible": False,
        "metadata": _provenance(
            prediction,
            kind="tumor_mask",
            markers=list(mask.markers),
            threshold=mask.threshold,
            automatic=mask.automatic,
            threshold_mode=mask.mode,
        ),
    }
    return mask.raster.astype(np.uint8), kwargs, "labels"


def tumor_contour_layer(prediction: Prediction, mask: TumorMask, placement: Placement | None = None) -> tuple:
    """Shapes layer of the tumour contours (outer rings and holes), data in level-0 ``(y, x)``."""
    grid = prediction.grid
    placement = placement or Placement.of_prediction(prediction)
    shapes = []
    for rings in mask_polygons(mask.raster, grid.origin, grid.stride):
        for ring in rings:
            shapes.append(np.column_stack([ring[:, 1], ring[:, 0]]))
    stride = float(np.mean(grid.stride))
    kwargs = {
        "name": "tumour (predicted)",
        "shape_type": "polygon",
        "edge_color": "red",
        "face_color": "transparent",
        "edge_width": max(2.0, stride / 6),
        **placement.layer_kwargs(),
        "metadata": _provenance(prediction, kind="tumor_contour", markers=list(mask.markers)),
    }
    return shapes, kwargs, "shapes"


def measured_points_layer(
    spots,
    gene: str,
    *,
    mpp: tuple[float | None, float | None],
    diameter_um: float = 100.0,
    placement: Placement | None = None,
) -> tuple:
    """Points layer of measured expression at measured spot centres (scanpy/squidpy AnnData).

    ``obsm["spatial"]`` must be in level-0 pixels of the slide shown; ``mpp`` (the
    prediction's) sizes the spots.
    """
    from .io.st_data import match_genes

    idx, found, missing = match_genes(spots.var, [gene])
    if missing:
        raise KeyError(f"gene {gene!r} is not in the measured spots")
    values = log1p_cp10k(spots, idx).ravel().astype(np.float64)
    # A NaN or infinite count (a damaged table) would make napari's colour limits NaN and
    # every point invisible: such spots are left out of the colours (drawn grey) and of r.
    finite = np.isfinite(values)
    mx, my = mpp
    if placement is None:
        placement = Placement(
            ((my, mx) if mx and my else (1.0, 1.0)), (0.0, 0.0), None, ("µm", "µm") if mx and my else None
        )
    xy = np.asarray(spots.obsm["spatial"], float)
    coords = np.column_stack([xy[:, 1], xy[:, 0]])  # level-0 (y, x); the placement maps them
    lo, hi = np.percentile(values[finite], [2, 98]) if finite.any() else (0.0, 1.0)
    values = np.where(finite, values, np.nan)
    kwargs = {
        "name": f"{found[0]} (measured)",
        "features": {"expression": values},
        "face_color": "expression",
        "face_colormap": "viridis",
        # A white ring around each measured spot: never mistaken for the predicted map
        # under it, which uses the same colours so the two can be compared.
        "border_color": "white",
        "border_width": 0.15,
        "border_width_is_relative": True,
        "face_contrast_limits": (float(lo), float(max(hi, lo + 1e-3))),
        "size": diameter_um / (mx or 0.5),
        "opacity": 0.9,
        **placement.layer_kwargs(),
        "metadata": {
            "stpredict": {"kind": "measured", "gene": found[0], "units": UNITS, "not_finite": int((~finite).sum())}
        },
    }
    return coords, kwargs, "points"
