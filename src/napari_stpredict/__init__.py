"""napari-stpredict: predict spatial gene expression from H&E whole-slide images.

For research use only; not for diagnosis.

The headless API imports neither torch nor Qt; heavy modules load on first use.
"""

from __future__ import annotations

from ._version import __version__

__all__ = ["__version__", "open_slide", "ArraySlide", "Slide", "detect_tissue", "to_spatialdata"]


def __getattr__(name: str):
    # Lazy attributes keep `import napari_stpredict` fast and free of torch/Qt.
    if name in ("open_slide", "ArraySlide", "Slide"):
        from .io import slide

        return getattr(slide, name)
    if name == "detect_tissue":
        from .tissue import detect_tissue

        return detect_tissue
    if name == "to_spatialdata":  # needs the optional extra napari-stpredict[spatialdata]
        from .inference.spatial_data import to_spatialdata

        return to_spatialdata
    raise AttributeError(f"module 'napari_stpredict' has no attribute {name!r}")
