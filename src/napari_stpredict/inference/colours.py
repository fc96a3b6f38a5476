"""Colour range of a gene's map: the same on every slide when the model is calibrated.

Used by every picture of a prediction (napari layers, ``overview.png``, the cohort tiles),
so a gene's colours mean the same expression wherever it is drawn.
"""

from __future__ import annotations

import numpy as np

from .prediction import Prediction

__all__ = ["colour_limits", "has_fixed_range"]


def has_fixed_range(prediction: Prediction) -> bool:
    """Whether the model carries its training spots' statistics (a fixed colour range)."""
    cal = prediction.meta.tumour_calibration
    return cal is not None and cal.has_statistics


def colour_limits(prediction: Prediction, gene: str, *, fixed: bool = True) -> tuple[float, float]:
    """Colour limits of a gene's heatmap.

    Parameters
    ----------
    fixed : bool
        True: the gene's range over the model's training spots (mean +- 2 sd of their
        predicted expression, from the checkpoint's calibration), the same on every slide,
        so colours can be compared between slides. False, or a model without calibration:
        this slide's 2nd-98th percentile.
    """
    cal = prediction.meta.tumour_calibration
    if fixed and cal is not None and cal.has_statistics:
        i = prediction._gene_index(gene)
        mean, sd = cal.gene_mean[i], cal.gene_std[i]
        lo, hi = max(0.0, mean - 2 * sd), mean + 2 * sd
    else:
        heat = prediction.heatmap(gene)
        finite = heat.raster[np.isfinite(heat.raster)]
        lo, hi = np.percentile(finite, [2, 98]) if finite.size else (0.0, 1.0)
    return float(lo), float(max(hi, lo + 1e-3))
