"""npe2 reader contribution: whole-slide images as lazy multiscale RGB layers.

Following napari's convention, `napari_get_reader` never raises: it returns None for
files that are not slides. For a slide that turns out to be corrupt, the returned
reader raises the clear error of `open_slide`, which napari shows as a notification.
"""

from __future__ import annotations

import uuid
import weakref
from pathlib import Path
from typing import Any

from .io._sniff import SLIDE_SUFFIXES, sniff_content

__all__ = ["napari_get_reader", "read_slide_layer_data", "slide_layer_data", "slide_of_layer"]

# Slides behind open layers, by the id stored in the layer metadata. Weak: the layer's
# dask arrays hold the slide, so it lives exactly as long as the layer data does and
# its file is closed when the layer is gone.
_OPEN_SLIDES: weakref.WeakValueDictionary = weakref.WeakValueDictionary()

# Plain images are napari's own business; a plugin claiming them would get in its way.
_READER_SUFFIXES = tuple(s for s in SLIDE_SUFFIXES if s not in (".jpg", ".jpeg", ".png"))


def napari_get_reader(path: str | list[str]):
    """Return a reader for a whole-slide file, or None if ``path`` is not one."""
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    try:
        p = Path(path)
    except TypeError:
        return None
    if p.suffix.lower() not in _READER_SUFFIXES:
        return None
    try:
        if p.suffix.lower() in (".tif", ".tiff") and p.is_file() and not _looks_like_rgb_tiff(p):
            return None  # a TIFF stack or a label image: not ours
    except Exception:  # noqa: BLE001 - a reader probe must never raise
        pass
    return read_slide_layer_data


def _looks_like_rgb_tiff(path: Path) -> bool:
    """Whether a TIFF holds an 8-bit 2-D RGB or grey image (a slide), judged cheaply."""
    from .errors import StPredictError
    from .io._guards import check_regular_file, check_tiff_ifd_chain

    try:
        check_regular_file(path)
        if sniff_content(path) != "tiff":
            return True  # let open_slide explain what is wrong with it
        check_tiff_ifd_chain(path)  # tifffile below would hang on a looping chain
    except StPredictError:
        return True  # ours to explain, through open_slide's clear error
    import tifffile

    try:
        with tifffile.TiffFile(str(path)) as tif:
            series = tif.series[0]
            samples = series.shape[-1 if series.axes == "YXS" else 0]
            return series.axes in ("YXS", "SYX") and series.dtype.itemsize == 1 and samples in (3, 4)
    except Exception:  # noqa: BLE001
        return True  # corrupt: open_slide gives the message


def read_slide_layer_data(path: str | list[str]) -> list[tuple[Any, dict, str]]:
    """Open a slide and return napari layer data (raises the `open_slide` error if it is bad)."""
    from .io.slide import open_slide

    if isinstance(path, (list, tuple)):
        path = path[0]
    slide = open_slide(path)
    return [slide_layer_data(slide)]


def slide_layer_data(slide) -> tuple[Any, dict, str]:
    """Layer data tuple for a `Slide`: a lazy multiscale RGB image in µm when mpp is known.

    The layer metadata holds only `Slide.summary` (no label or macro image, no raw
    properties, no folder path: those can carry patient identifiers) and an id by
    which `slide_of_layer` finds the open `Slide` to read patches at full resolution.
    """
    from .io.pyramid import prefetch_first_view, slide_pyramid

    levels = slide_pyramid(slide)
    prefetch_first_view(levels)  # decoded while napari builds the layer
    mpp_x, mpp_y = slide.mpp
    kwargs: dict[str, Any] = {
        "name": Path(slide.name).stem,
        "rgb": True,
        "multiscale": len(levels) > 1,
        "contrast_limits": (0, 255),
        "metadata": {"slide": slide.summary(), "stpredict_slide_id": _register(slide)},
    }
    if mpp_x is not None and mpp_y is not None:
        kwargs["scale"] = (mpp_y, mpp_x)
        kwargs["units"] = ("µm", "µm")
    data = levels if len(levels) > 1 else levels[0]
    return data, kwargs, "image"


def _register(slide) -> str:
    slide_id = uuid.uuid4().hex
    _OPEN_SLIDES[slide_id] = slide
    return slide_id


def slide_of_layer(layer):
    """Return the open `Slide` behind a layer made by this reader, or None."""
    slide_id = getattr(layer, "metadata", {}).get("stpredict_slide_id")
    return _OPEN_SLIDES.get(slide_id) if slide_id else None
