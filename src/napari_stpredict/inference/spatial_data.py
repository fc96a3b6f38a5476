"""A prediction as a SpatialData object, for scverse (squidpy, spatialdata-plot) and napari-spatialdata.

`to_spatialdata` builds, and `write_spatialdata` writes as ``prediction.zarr`` (what
``stpredict predict --export spatialdata`` adds to a slide's folder):

- ``slide``: the slide as a multiscale image (``c, y, x``, uint8 RGB). Whole-slide images
  are tens of gigapixels, so the image is the slide *downsampled* to at most
  `IMAGE_MAX_SIDE` pixels on its long side (a pyramid of 2x steps below that), placed on
  the slide's level-0 pixels by a scale transformation; the original slide file stays the
  full-resolution reference (its name is in the table's ``uns``).
- ``spots``: one circle per predicted spot, centred on its level-0 pixel position (the
  prediction's ``obsm["spatial"]``), its radius half the spot's size (the circle inscribed
  in the grid cell the GeoTIFF maps draw; napari-spatialdata draws circles as points, fast
  for a 24,000-spot slide).
- ``table``: the predicted expression (every gene the model predicts, log1p counts per
  10,000) with the per-spot columns of ``prediction.h5ad`` (confidence, out-of-domain
  distance and verdict, tumour score and call), annotating ``spots`` (``region`` /
  ``spot_id``).
- ``tumour``: the tumour contours as polygons (with holes), when any spot is called.

Coordinate systems: ``global``, the slide's level-0 pixels (spatialdata's default, what
napari-spatialdata opens), and ``micrometres`` when the slide's resolution is known.

spatialdata is an optional extra (``pip install "napari-stpredict[spatialdata]"``), imported
only here and only when asked.
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import StPredictError

__all__ = [
    "IMAGE_MAX_SIDE",
    "SPATIALDATA_FILE",
    "spatialdata_missing",
    "to_spatialdata",
    "write_spatialdata",
]

SPATIALDATA_FILE = "prediction.zarr"
#: Longest side, in pixels, of the slide image stored in the export.
IMAGE_MAX_SIDE = 4096
_EXTRA_HINT = 'SpatialData export needs the optional extra: pip install "napari-stpredict[spatialdata]"'


def spatialdata_missing() -> str | None:
    """The one-line message naming the extra when spatialdata is not installed, else None."""
    return None if importlib.util.find_spec("spatialdata") is not None else _EXTRA_HINT


def _require_spatialdata():
    message = spatialdata_missing()
    if message:
        raise StPredictError(message)
    import spatialdata

    return spatialdata


def _transformations(scale_xy: tuple[float, float], mpp: tuple[float | None, float | None]) -> dict[str, Any]:
    """Level-0 pixels (``global``) and, when known, micrometres, for an element whose own
    units are ``scale_xy`` level-0 pixels."""
    from spatialdata.transformations import Identity, Scale, Sequence

    sx, sy = scale_xy
    to_pixels = Identity() if (sx, sy) == (1.0, 1.0) else Scale([sx, sy], axes=("x", "y"))
    out: dict[str, Any] = {"global": to_pixels}
    if mpp[0] and mpp[1]:
        out["micrometres"] = Sequence([to_pixels, Scale([float(mpp[0]), float(mpp[1])], axes=("x", "y"))])
    return out


def _image_element(slide, max_side: int, mpp):
    from spatialdata.models import Image2DModel

    thumb = np.ascontiguousarray(slide.thumbnail(max_side)[..., :3])
    width, height = slide.dimensions
    scale = (width / thumb.shape[1], height / thumb.shape[0])
    levels: list[int] = []  # 2x steps down to ~512 px, so viewers open it at any zoom
    side = max(thumb.shape[:2])
    while side > 512 and len(levels) < 6:
        levels.append(2)
        side //= 2
    return Image2DModel.parse(
        thumb.transpose(2, 0, 1),
        dims=("c", "y", "x"),
        c_coords=["r", "g", "b"],
        scale_factors=levels or None,
        transformations=_transformations(scale, mpp),
        chunks=(3, 1024, 1024),
    )


def _spots_element(prediction, mpp):
    import geopandas as gpd
    from shapely import points
    from spatialdata.models import ShapesModel

    centres = np.asarray(prediction.adata.obsm["spatial"], float)
    radius = min(prediction.grid.stride) / 2
    frame = gpd.GeoDataFrame(
        {"radius": np.full(len(centres), radius)},
        geometry=points(centres[:, 0], centres[:, 1]),
        index=np.arange(len(centres)),
    )
    return ShapesModel.parse(frame, transformations=_transformations((1.0, 1.0), mpp))


def _tumour_element(prediction, mask, mpp):
    import geopandas as gpd
    from shapely.geometry import Polygon
    from spatialdata.models import ShapesModel

    from .tumor import mask_polygons

    rings = mask_polygons(mask.raster, prediction.grid.origin, prediction.grid.stride)
    if not rings:
        return None
    shapes = [Polygon(outer, holes) for outer, *holes in rings]
    return ShapesModel.parse(gpd.GeoDataFrame(geometry=shapes), transformations=_transformations((1.0, 1.0), mpp))


def _table(prediction, mask):
    import anndata as ad
    import pandas as pd
    from spatialdata.models import TableModel

    from .tumor import add_tumour_columns

    if mask is not None:  # each spot's call as drawn, so the table joins the contour
        add_tumour_columns(prediction, mask)
    source = prediction.adata
    obs = source.obs.copy()
    obs["region"] = pd.Categorical(["spots"] * len(obs))
    obs["spot_id"] = np.arange(len(obs))
    for column in ("tumour", "out_of_domain"):
        if column in obs:
            obs[column] = obs[column].astype(bool)
    meta = prediction.meta
    uns = {
        "stpredict": {
            "note": "Research use only; not for diagnosis. Predicted from the H&E image, not measured.",
            "model": meta.model.name,
            "slide": meta.slide.name,
            "units": "log1p(counts per 10,000), predicted",
            "coordinates": "global: level-0 pixels of the slide; micrometres when its resolution is known",
            "spot_size_um": meta.stride_um,
            "tumour_threshold": None if mask is None else float(mask.threshold),
            "tumour_markers": [] if mask is None else list(mask.markers),
        }
    }
    table = ad.AnnData(
        X=np.asarray(source.X, np.float32),
        obs=obs,
        var=pd.DataFrame(index=list(source.var_names)),
        obsm={"spatial": np.asarray(source.obsm["spatial"], float)},
        uns=uns,
    )
    return TableModel.parse(table, region="spots", region_key="region", instance_key="spot_id")


def to_spatialdata(prediction, slide, mask=None, *, image_max_side: int = IMAGE_MAX_SIDE):
    """Build a SpatialData object from a prediction and its slide.

    Parameters
    ----------
    prediction : Prediction
        The prediction (`napari_stpredict.inference.prediction.Prediction`).
    slide : Slide
        The slide it was predicted from (opened with `napari_stpredict.io.open_slide`).
    mask : TumorMask, optional
        The tumour mask (`napari_stpredict.inference.tumor.tumor_mask`): its contours become
        the ``tumour`` shapes and its calls the table's ``tumour`` column (written into the
        prediction's own spot table too, by `napari_stpredict.inference.tumor.add_tumour_columns`).
    image_max_side : int
        Longest side of the stored slide image, in pixels (see the module's notes).

    Returns
    -------
    spatialdata.SpatialData
        With the image ``slide``, the shapes ``spots`` (and ``tumour``) and the table
        ``table`` annotating ``spots``.

    Raises
    ------
    StPredictError
        spatialdata is not installed (the message names the extra).

    Examples
    --------
    >>> sdata = to_spatialdata(prediction, slide, mask)  # doctest: +SKIP
    >>> sdata["table"][:, "ERBB2"].X  # doctest: +SKIP
    """
    spatialdata = _require_spatialdata()
    if int(image_max_side) < 64:
        raise ValueError(f"image_max_side must be at least 64 pixels, got {image_max_side}")
    mpp = slide.mpp
    shapes = {"spots": _spots_element(prediction, mpp)}
    if mask is not None and (contour := _tumour_element(prediction, mask, mpp)) is not None:
        shapes["tumour"] = contour
    return spatialdata.SpatialData(
        images={"slide": _image_element(slide, int(image_max_side), mpp)},
        shapes=shapes,
        tables={"table": _table(prediction, mask)},
    )


def write_spatialdata(sdata, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write a SpatialData object as a ``.zarr`` folder that appears whole or not at all.

    Parameters
    ----------
    sdata : spatialdata.SpatialData
        From `to_spatialdata`.
    path : str or Path
        The ``.zarr`` folder; its parent must exist.
    overwrite : bool
        Replace an existing ``path`` (only once the new one is complete).

    Returns
    -------
    Path
        ``path``.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise StPredictError(f"{path}: already exists (pass overwrite=True to replace it)")
    # Written beside the target and renamed: a failure or a kill leaves no half-written store.
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    store = tmp / path.name
    try:
        with warnings.catch_warnings():  # zarr's notice about a future default, not about this store
            warnings.filterwarnings("ignore", message=".*autosharding.*", category=UserWarning)
            sdata.write(store, update_sdata_path=False)
        old = tmp / ".old"
        if path.exists():
            path.rename(old)
        try:
            store.rename(path)
        except OSError:
            if old.exists():  # the previous store goes back where it was
                old.rename(path)
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path
