"""Where level-0 slide pixels sit in napari's world: the one place that converts.

Every prediction layer (heatmaps, masks, contours, measured spots) takes its transform
from the slide layer it belongs to, whatever reader opened the slide: ours (world in µm
when the file records its resolution), napari's own (pixels), or another plugin's (any
scale, translate or affine). A resolution typed into the widget changes the prediction,
never where the layers are drawn.

Frames: a *level-0 coordinate* is continuous, ``(x, y)``, with pixel ``i`` spanning
``[i, i + 1)``; napari centres data pixel ``i`` of the slide layer at its index ``i``,
so level-0 coordinate ``x`` is slide-layer data coordinate ``x - 0.5``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Placement"]


@dataclass(frozen=True)
class Placement:
    """The slide layer's transform of its level-0 data, as napari applies it.

    Attributes
    ----------
    scale, translate : tuple of float
        ``(y, x)`` world per level-0 pixel, and world position of level-0 pixel (0, 0).
    affine : tuple or None
        The layer's 3 x 3 affine (y, x, 1), applied after scale and translate; None for
        the identity.
    units : tuple of str or None
        The layer's units (e.g. ``("µm", "µm")``), copied so napari sees one unit system.
    """

    scale: tuple[float, float] = (1.0, 1.0)
    translate: tuple[float, float] = (0.0, 0.0)
    affine: tuple[tuple[float, ...], ...] | None = None
    units: tuple[str, str] | None = None

    @classmethod
    def of_layer(cls, layer) -> Placement:
        """The placement of a napari Image layer (its last two axes: y, x)."""
        matrix = np.asarray(layer.affine.affine_matrix, float)[-3:, -3:]
        affine = None if np.allclose(matrix, np.eye(3)) else tuple(tuple(float(v) for v in row) for row in matrix)
        units: tuple[str, str] | None = None
        if getattr(layer, "units", None) is not None:
            uy, ux = (str(u) for u in layer.units[-2:])
            units = None if all(u in ("pixel", "pixels", "") for u in (uy, ux)) else (uy, ux)
        (sy, sx), (ty, tx) = (float(v) for v in layer.scale[-2:]), (float(v) for v in layer.translate[-2:])
        return cls((sy, sx), (ty, tx), affine, units)

    @classmethod
    def of_prediction(cls, prediction) -> Placement:
        """The frame this plugin's reader gives a slide: µm when its mpp is known, else pixels.

        Used when no slide layer is at hand (scripts, exports).
        """
        mx, my = prediction.meta.mpp
        if mx and my:
            return cls((float(my), float(mx)), (0.0, 0.0), None, ("µm", "µm"))
        return cls()

    def layer_kwargs(
        self, l0_origin: tuple[float, float] = (0.0, 0.0), l0_stride: tuple[float, float] = (1.0, 1.0)
    ) -> dict[str, Any]:
        """``scale``/``translate`` (and ``affine``, ``units``) for a layer whose data
        coordinate ``(row, col)`` is the level-0 point ``origin + (col, row) * stride``.

        Parameters
        ----------
        l0_origin, l0_stride : tuple of float
            ``(x, y)`` in level-0 pixels: a spot grid's first centre and spacing; the
            defaults make data coordinates plain level-0 coordinates (points, shapes).
        """
        (sy, sx), (ty, tx) = self.scale, self.translate
        kwargs: dict[str, Any] = {
            "scale": (sy * l0_stride[1], sx * l0_stride[0]),
            "translate": (ty + sy * (l0_origin[1] - 0.5), tx + sx * (l0_origin[0] - 0.5)),
        }
        if self.affine is not None:
            kwargs["affine"] = np.asarray(self.affine)
        if self.units is not None:
            kwargs["units"] = self.units
        return kwargs

    def grid_kwargs(self, prediction) -> dict[str, Any]:
        """`layer_kwargs` for rasters on a prediction's spot grid."""
        grid = prediction.grid
        return self.layer_kwargs(grid.origin, grid.stride)

    def data_to_world(self, yx: np.ndarray) -> np.ndarray:
        """World ``(y, x)`` of the layer's data coordinates ``(y, x)``."""
        yx = np.atleast_2d(np.asarray(yx, float))
        world = yx * np.asarray(self.scale) + np.asarray(self.translate)
        if self.affine is not None:
            m = np.asarray(self.affine)
            world = world @ m[:2, :2].T + m[:2, 2]
        return world

    def world_to_data(self, world_yx: np.ndarray) -> np.ndarray:
        """Inverse of `data_to_world`."""
        world = np.atleast_2d(np.asarray(world_yx, float))
        if self.affine is not None:
            m = np.asarray(self.affine)
            world = (world - m[:2, 2]) @ np.linalg.inv(m[:2, :2]).T
        return (world - np.asarray(self.translate)) / np.asarray(self.scale)

    def l0_to_world(self, l0_xy: np.ndarray) -> np.ndarray:
        """World ``(y, x)`` of level-0 ``(x, y)`` points (what napari shows for them)."""
        xy = np.atleast_2d(np.asarray(l0_xy, float))
        return self.data_to_world(np.column_stack([xy[:, 1] - 0.5, xy[:, 0] - 0.5]))

    def world_to_l0(self, world_yx: np.ndarray) -> np.ndarray:
        """Level-0 ``(x, y)`` of world ``(y, x)`` points: the inverse of `l0_to_world`."""
        data = self.world_to_data(world_yx)
        return np.column_stack([data[:, 1] + 0.5, data[:, 0] + 0.5])

    @property
    def world_per_l0(self) -> float:
        """Mean world units per level-0 pixel (for sizes: line widths, point diameters)."""
        return float(np.mean(np.abs(self.scale)))
