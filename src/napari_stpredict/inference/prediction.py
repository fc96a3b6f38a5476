"""`Prediction`: predicted expression of every spot of a slide, AnnData-backed.

``obs`` holds the spot centres in level-0 pixels (``x``, ``y``), grid indices
(``grid_row``, ``grid_col``), ``confidence``, ``tissue_fraction``, the out-of-domain
``domain_distance`` and ``out_of_domain`` flag; ``X`` the predicted log1p(CP10k)
expression of all model genes; ``uns["stpredict"]`` the model, mpp, patch and stride,
grid geometry, the slide summary, the trust verdicts (``trust``: stain check and
out-of-domain verdict) and the model's tumour calibration.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..grid import GridGeometry
from ..vocabulary import UNITS, GeneIndex
from .meta import PredictionMeta, Trust

__all__ = ["Prediction", "Heatmap", "UNITS"]


@dataclass(frozen=True)
class Heatmap:
    """A raster on the spot grid and where it sits on the slide.

    ``raster[row, col]`` is the value of the spot centred at level-0
    ``origin + (col, row) * stride``. In napari world coordinates (µm when the slide
    mpp is known, else level-0 pixels) the layer takes ``scale`` and ``translate``.
    """

    raster: np.ndarray
    scale: tuple[float, float]
    translate: tuple[float, float]
    l0_origin: tuple[float, float]
    l0_stride: tuple[float, float]
    name: str
    units: str = UNITS

    @property
    def grid(self) -> GridGeometry:
        """The spot grid the raster lies on."""
        return GridGeometry.of(self.l0_origin, self.l0_stride, self.raster.shape)

    def l0_of(self, row: float, col: float) -> tuple[float, float]:
        """Level-0 ``(x, y)`` of the centre of grid pixel ``(row, col)``."""
        return self.grid.centre_of(row, col)

    def sample_smooth(self, l0_xy: np.ndarray) -> np.ndarray:
        """Values at level-0 ``(x, y)`` points, linearly interpolated between spot centres
        (missing neighbours left out of the weights; NaN where the point's cell is off the
        grid). What napari's linear display shows; for pictures, not for statistics."""
        xy = np.atleast_2d(np.asarray(l0_xy, float))
        fc = (xy[:, 0] - self.l0_origin[0]) / self.l0_stride[0]
        fr = (xy[:, 1] - self.l0_origin[1]) / self.l0_stride[1]
        c0, r0 = np.floor(fc).astype(int), np.floor(fr).astype(int)
        tc, tr = fc - c0, fr - r0
        rows, cols = self.raster.shape
        total = np.zeros(len(xy))
        weight = np.zeros(len(xy))
        for dr, wr in ((0, 1 - tr), (1, tr)):
            for dc, wc in ((0, 1 - tc), (1, tc)):
                r, c = r0 + dr, c0 + dc
                ok = (r >= 0) & (r < rows) & (c >= 0) & (c < cols)
                v = np.full(len(xy), np.nan)
                v[ok] = self.raster[r[ok], c[ok]]
                good = np.isfinite(v)
                w = wr * wc * good
                total[good] += (w * v)[good]
                weight += w
        out = np.where(weight > 1e-9, total / np.maximum(weight, 1e-9), np.nan)
        out[np.isnan(self.sample(xy))] = np.nan  # keep the tissue outline of the grid
        return out.astype(np.float32)

    def display_raster(self, oversample: int) -> tuple[np.ndarray, tuple[float, float], tuple[float, float]]:
        """The raster as it is drawn: each spot's cell split into ``oversample`` x
        ``oversample`` sub-cells valued by `sample_smooth` at their centres.

        Interpolating on screen between spot centres (napari's linear mode) blanks the
        outer half of every cell at the tissue edge, where a neighbour is missing, and strips
        one spot wide vanish; this keeps every predicted cell whole and nothing outside it.
        With an odd ``oversample`` each cell's centre sub-cell is the spot's own value
        (`spot_values_of_display` reads them back).

        Returns
        -------
        raster : ndarray
            ``(rows * oversample, cols * oversample)`` float32, NaN off the tissue.
        l0_origin, l0_stride : tuple of float
            Level-0 ``(x, y)`` of the first sub-cell's centre and the sub-cell spacing.
        """
        f = int(oversample)
        rows, cols = self.raster.shape
        offsets = (np.arange(f) + 0.5) / f - 0.5  # sub-cell centres within a cell, in cells
        fr = (np.arange(rows)[:, None] + offsets[None, :]).ravel()
        fc = (np.arange(cols)[:, None] + offsets[None, :]).ravel()
        yy, xx = np.meshgrid(fr, fc, indexing="ij")
        l0 = np.column_stack(
            [self.l0_origin[0] + xx.ravel() * self.l0_stride[0], self.l0_origin[1] + yy.ravel() * self.l0_stride[1]]
        )
        values = self.sample_smooth(l0).reshape(rows * f, cols * f)
        if f % 2 == 1:  # the centre sub-cell is exactly the spot (no rounding through level 0)
            values[f // 2 :: f, f // 2 :: f] = self.raster
        fine = self.grid.subdivided(f)
        return values, fine.origin, fine.stride

    def sample(self, l0_xy: np.ndarray) -> np.ndarray:
        """Values at level-0 ``(x, y)`` points (the grid cell each falls in; NaN off the grid)."""
        return self.grid.sample(self.raster, l0_xy)


class Prediction:
    """Predicted expression of a slide's spots; choose genes without re-running the model."""

    def __init__(self, adata) -> None:
        self.adata = adata
        self._meta: PredictionMeta | None = None

    # --- access ------------------------------------------------------------------
    @property
    def genes(self) -> list[str]:
        return list(self.adata.var_names)

    @property
    def meta(self) -> PredictionMeta:
        """The typed metadata (model, slide, grid, trust verdicts, tumour calibration, cache)."""
        if self._meta is None:
            self._meta = PredictionMeta.from_uns(self.adata.uns["stpredict"])
        return self._meta

    def set_meta(self, meta: PredictionMeta) -> None:
        """Replace the metadata (written to ``uns["stpredict"]`` as `PredictionMeta.to_uns`)."""
        self.adata.uns["stpredict"] = meta.to_uns()
        self._meta = meta

    @property
    def trust(self) -> Trust:
        """The trust verdicts: stain, resolution, out of domain."""
        return self.meta.trust

    @property
    def grid(self) -> GridGeometry:
        """The spot grid (level-0 origin, stride and shape)."""
        return self.meta.grid

    @property
    def l0_centres(self) -> np.ndarray:
        return self.adata.obs[["x", "y"]].to_numpy(float)

    @property
    def confidence(self) -> np.ndarray:
        return self.adata.obs["confidence"].to_numpy(np.float32)

    def expression(self, gene: str) -> np.ndarray:
        """Predicted expression of one gene per spot (case-insensitive name)."""
        return np.asarray(self.adata.X[:, self._gene_index(gene)], np.float32).ravel()

    @property
    def gene_index(self) -> GeneIndex:
        """Case-insensitive lookup of the predicted genes (canonical spelling)."""
        return GeneIndex(self.adata.var_names)

    def _gene_index(self, gene: str) -> int:
        idx = self.gene_index.find(gene)
        if idx is None:
            raise KeyError(
                f"gene {gene!r} is not predicted by model {self.meta.model.name}; "
                f"it predicts {self.adata.n_vars} genes, e.g. {', '.join(self.genes[:5])}"
            )
        return idx

    # --- rasters on the grid -------------------------------------------------------
    def _placement(self) -> tuple[tuple[float, float], tuple[float, float]]:
        """napari scale and translate of grid rasters in the frame this plugin's reader gives
        the slide (µm when its mpp is known, else level-0 pixels); `Placement` converts."""
        from ..placement import Placement

        kwargs = Placement.of_prediction(self).grid_kwargs(self)
        return tuple(kwargs["scale"]), tuple(kwargs["translate"])

    def raster(self, values: np.ndarray, name: str, fill: float = np.nan, units: str = UNITS) -> Heatmap:
        """Any per-spot values as a `Heatmap` on the grid."""
        grid = self.grid
        obs = self.adata.obs
        out = grid.place(obs["grid_row"].to_numpy(int), obs["grid_col"].to_numpy(int), values, fill)
        scale, translate = self._placement()
        return Heatmap(out, scale, translate, grid.origin, grid.stride, name, units)

    def heatmap(self, gene: str) -> Heatmap:
        """Predicted expression of ``gene`` as a raster on the spot grid (NaN off tissue)."""
        return self.raster(self.expression(gene), self.genes[self._gene_index(gene)])

    # --- persistence -----------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write as ``.h5ad`` (atomically)."""
        from ..io.atomic import atomic_path

        path = Path(path)
        with atomic_path(path) as tmp:
            self.adata.write_h5ad(tmp, compression="gzip")
        return path

    @classmethod
    def load(cls, path: str | Path) -> Prediction:
        """Read a prediction written by `save`."""
        import anndata as ad

        adata = ad.read_h5ad(path)
        if "stpredict" not in adata.uns:
            raise ValueError(f"{path}: not a napari-stpredict prediction (no uns['stpredict'])")
        # h5ad stores lists as arrays; give back the plain values a fresh prediction has.
        adata.uns["stpredict"] = _plain(adata.uns["stpredict"])
        prediction = cls(adata)
        try:
            prediction.meta  # noqa: B018 - parsed now, so a damaged file fails here, naming it
        except (ValueError, TypeError, KeyError) as exc:
            raise ValueError(f"{path}: damaged napari-stpredict metadata ({exc})") from exc
        return prediction

    def __len__(self) -> int:
        return self.adata.n_obs

    def __repr__(self) -> str:
        return (
            f"<Prediction {self.meta.slide.name}: {self.adata.n_obs} spots x "
            f"{self.adata.n_vars} genes, stride {self.meta.stride_um:g} µm>"
        )


def _plain(value: Any) -> Any:
    """``value`` with numpy arrays and scalars (as read from ``.h5ad``) made lists and numbers."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    return value
