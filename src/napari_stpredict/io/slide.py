"""Whole-slide image access: the `open_slide` factory (the `Slide` interface is in `base`).

All locations are level-0 ``(x, y)`` pixels and all sizes ``(width, height)``; arrays
come back as ``(height, width, 3)`` RGB ``uint8``. Regions outside the scanned area
read as white, like glass.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import SlideFormatError
from ._sniff import check_suffix_matches_content
from .base import ArraySlide, Slide, _mpp_pair, paste_region, plausible_mpp, resize_rgb

__all__ = ["Slide", "ArraySlide", "open_slide", "plausible_mpp"]
# Re-exported for code that imported them from here before the base class had its own module.
_REEXPORTED = (ArraySlide, paste_region, resize_rgb, _mpp_pair)


def open_slide(
    path: str | Path,
    *,
    mpp: float | tuple[float, float] | None = None,
    backend: str = "auto",
) -> Slide:
    """Open a whole-slide image or a plain image as a `Slide`.

    The format is decided by the file's content, not its suffix alone: OpenSlide reads
    what it supports (Aperio, Hamamatsu, Leica, Ventana, MIRAX, DICOM WSI, generic tiled
    TIFF); tifffile reads TIFFs OpenSlide refuses or sees only partly (OME-TIFF with
    SubIFD pyramids, stripped TIFF); Pillow reads JPEG and PNG.

    Parameters
    ----------
    path : str or Path
        The slide file.
    mpp : float or (float, float), optional
        µm per pixel to use when the file does not record it (required for a physical
        scale on JPEG/PNG). Ignored with a warning if the file records its own.
    backend : {"auto", "openslide", "tifffile", "pillow"}
        Force a reader; "auto" picks by content.

    Returns
    -------
    Slide
        Close it (or use ``with``) when done.

    Raises
    ------
    SlideNotFoundError, SlideFormatError, SlideReadError
        With the file name and what is wrong.
    """
    path = Path(path)
    content = check_suffix_matches_content(path)
    if backend not in ("auto", "openslide", "tifffile", "pillow"):
        raise ValueError(f"backend must be 'auto', 'openslide', 'tifffile' or 'pillow', got {backend!r}")
    if backend == "pillow" or (backend == "auto" and content in ("jpeg", "png")):
        from ._image_backend import PillowSlide

        slide: Slide = PillowSlide(path)
    elif backend == "tifffile":
        from ._tiff_backend import TiffSlide, check_tiff_complete

        check_tiff_complete(path)
        slide = TiffSlide(path)
    elif backend == "openslide":
        from ._openslide_backend import OpenSlideSlide

        if content == "tiff":
            from ._tiff_backend import check_tiff_complete

            check_tiff_complete(path)
        slide = OpenSlideSlide(path)
    else:
        slide = _open_auto(path, content)
    try:
        _check_readable_size(slide)
        if mpp is not None:
            _apply_user_mpp(slide, mpp)
    except BaseException:
        slide.close()
        raise
    return slide


def _check_readable_size(slide: Slide) -> None:
    """Refuse slides whose coarsest level is too big to read whole (for the thumbnail)."""
    from ._guards import MAX_UNPYRAMIDED_PIXELS

    width, height = slide.level_dimensions[-1]
    if width * height > MAX_UNPYRAMIDED_PIXELS:
        w0, h0 = slide.dimensions
        raise SlideFormatError(
            f"{slide.name}: its smallest level is {width:,} x {height:,} px ({w0:,} x {h0:,} px at full "
            f"resolution, {slide.level_count} level(s)); without a coarser pyramid level it cannot be shown or "
            "analysed in bounded memory. Save it as a pyramidal TIFF (e.g. vips tiffsave --tile --pyramid)"
        )


def _open_auto(path: Path, content: str) -> Slide:
    from ._openslide_backend import OpenSlideSlide, openslide_format

    if content == "tiff":
        from ._tiff_backend import TiffSlide, check_tiff_complete

        tiff_levels = check_tiff_complete(path)
        vendor = openslide_format(path)
        if vendor is None:
            return TiffSlide(path)
        slide = OpenSlideSlide(path)
        # OpenSlide sees only top-level pages of a generic TIFF: a SubIFD (OME) pyramid
        # looks like one huge level to it. tifffile then gives the whole pyramid.
        if vendor == "generic-tiff" and tiff_levels > slide.level_count:
            slide.close()
            return TiffSlide(path)
        return slide
    vendor = openslide_format(path)
    if vendor is None:
        raise SlideFormatError(
            f"{path}: no slide reader recognises this file (content: {content}); it may be corrupt "
            "or a format that needs companion files next to it"
        )
    return OpenSlideSlide(path)


def _apply_user_mpp(slide: Slide, mpp: float | tuple[float, float]) -> None:
    import warnings

    from ..errors import StPredictWarning

    pair = _mpp_pair(mpp, slide.name)
    file_mpp = slide._file_mpp()
    if file_mpp[0] is not None and file_mpp[1] is not None:
        if not np.allclose(np.asarray(pair, float), np.asarray(file_mpp, float), rtol=0.02):
            warnings.warn(
                f"{slide.name}: the file records mpp {file_mpp}; ignoring mpp={mpp!r}",
                StPredictWarning,
                stacklevel=3,
            )
        return
    slide._fallback_mpp = pair
