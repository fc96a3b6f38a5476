"""`SlideAnalysis`: everything about one slide's analysis, without Qt.

The dock widget keeps one per slide layer, so several slides in one napari window keep
their own prediction, tumour mask, measured spots and layers; tests drive it without a
viewer. It holds state only: computing is done by the engine and `inference.tumor`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .placement import Placement

__all__ = ["SlideAnalysis", "check_spots_fit"]


def check_spots_fit(spots, prediction, *, source: str = "measured spots") -> None:
    """Raise ValueError unless measured spots lie on the predicted slide.

    Parameters
    ----------
    spots : anndata.AnnData
        With ``obsm["spatial"]`` in level-0 pixels.
    prediction : Prediction
        The slide's prediction (its level-0 size and predicted spot grid).
    source : str
        How to name the spots in the message (e.g. the file name).
    """
    if "spatial" not in spots.obsm:
        raise ValueError(f"{source}: no obsm['spatial'] (the spots' level-0 (x, y) pixel positions)")
    xy = np.asarray(spots.obsm["spatial"], float)
    if xy.ndim != 2 or xy.shape[1] != 2 or xy.shape[0] != spots.n_obs:
        raise ValueError(
            f"{source}: obsm['spatial'] must hold one level-0 (x, y) pair per spot, shape ({spots.n_obs}, 2); "
            f"got shape {xy.shape}"
        )
    if not np.isfinite(xy).all():
        raise ValueError(f"{source}: {int((~np.isfinite(xy)).any(axis=1).sum())} spots have no finite (x, y) position")
    width, height = prediction.meta.slide.dimensions
    inside = (xy[:, 0] >= 0) & (xy[:, 0] < width) & (xy[:, 1] >= 0) & (xy[:, 1] < height)
    if inside.mean() < 0.9:
        raise ValueError(
            f"{source}: {1 - inside.mean():.0%} of its {len(xy)} spots lie outside this slide "
            f"({width} x {height} px at level 0); they belong to another slide or are not in its "
            "level-0 pixels"
        )
    centres = prediction.l0_centres
    stride = float(np.mean(prediction.grid.stride))
    from scipy.spatial import cKDTree

    near = cKDTree(centres).query(xy[inside], distance_upper_bound=1.5 * stride)[0]
    if np.isfinite(near).mean() < 0.5:
        raise ValueError(
            f"{source}: most of its spots are not on this slide's tissue; they belong to another "
            "slide or use another coordinate frame"
        )


@dataclass
class SlideAnalysis:
    """One slide layer's analysis: its prediction and what was derived from it.

    Attributes
    ----------
    layer_name : str
        The napari slide layer (prediction layers are named after it).
    prediction : Prediction
    placement : Placement
        The slide layer's transform; every prediction layer takes it.
    tumor : TumorMask or None
        The current tumour mask (markers and threshold as last chosen).
    spots : anndata.AnnData or None
        Measured spots of this slide, if any.
    last_r : float
        Pearson r of predicted vs measured for the gene last compared.
    """

    layer_name: str
    prediction: Any
    placement: Placement
    tumor: Any = None
    spots: Any = None
    spots_source: str | None = None
    last_r: float = float("nan")
    shown_genes: list[str] = field(default_factory=list)
    browsing_layer: str | None = None  # the heatmap layer reused when one gene after another is shown

    def label(self, name: str) -> str:
        """A layer name for this slide, e.g. ``"ERBB2 (predicted) [her2st_C2]"``."""
        return f"{name} [{self.layer_name}]"

    def set_spots(self, spots, source: str) -> None:
        """Attach measured spots after checking they lie on this slide (see `check_spots_fit`)."""
        check_spots_fit(spots, self.prediction, source=source)
        self.spots, self.spots_source = spots, source

    def spot_at(self, l0_xy) -> int | None:
        """Index of the predicted spot whose grid cell holds the level-0 point, or None."""
        grid = self.prediction.grid
        if getattr(self, "_spot_index", None) is None:
            index = np.full(grid.shape, -1, np.int64)
            obs = self.prediction.adata.obs
            index[obs["grid_row"].to_numpy(int), obs["grid_col"].to_numpy(int)] = np.arange(len(obs))
            self._spot_index = index
        rows, cols = grid.cell_of(np.asarray(l0_xy, float).ravel()[:2])
        if not grid.inside(rows, cols)[0] or self._spot_index[rows[0], cols[0]] < 0:
            return None
        return int(self._spot_index[rows[0], cols[0]])

    def readout(self, l0_xy) -> str:
        """What the prediction says at a level-0 point: the genes shown with values and
        units, confidence, tumour score against its threshold, the out-of-domain flag."""
        from .inference.prediction import UNITS

        spot = self.spot_at(l0_xy)
        if spot is None:
            return "no prediction here"
        prediction = self.prediction
        values = [
            f"{gene} {float(prediction.adata.X[spot, prediction._gene_index(gene)]):.2f}"
            for gene in self.shown_genes[:3]
        ]
        text = f"{', '.join(values)} {UNITS}; confidence {prediction.confidence[spot]:.2f}"
        if self.tumor is not None:
            text += f"; tumour score {self.tumor.score[spot]:.2f} (threshold {self.tumor.threshold:.2f})"
        if "out_of_domain" in prediction.adata.obs and bool(prediction.adata.obs["out_of_domain"].iloc[spot]):
            text += "; OUT OF DOMAIN"
        return text

    def pearson(self, gene: str, measured: np.ndarray) -> float:
        """Pearson r of the predicted ``gene`` at the measured spots against ``measured``
        (spots whose measured value is not finite are left out)."""
        values = self.prediction.heatmap(gene).sample(self.spots.obsm["spatial"])
        measured = np.asarray(measured, float)
        good = np.isfinite(values) & np.isfinite(measured)
        if good.sum() < 3 or np.std(values[good]) == 0 or np.std(measured[good]) == 0:
            return float("nan")
        return float(np.corrcoef(values[good], measured[good])[0, 1])
