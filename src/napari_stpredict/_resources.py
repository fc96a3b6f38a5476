"""Locate files shipped with the package (sample data), in wheels and source checkouts."""

from __future__ import annotations

from pathlib import Path

__all__ = ["sample_data_dir", "SAMPLE_SLIDE", "SAMPLE_SPOTS"]

SAMPLE_SLIDE = "her2st_C2.tiff"
SAMPLE_SPOTS = "her2st_C2_spots.h5ad"


def sample_data_dir() -> Path:
    """Folder holding the bundled sample slide and its spots.

    In a wheel it is ``napari_stpredict/sample_data``; in an editable install of a source
    checkout it is the repository's top-level ``sample_data``.
    """
    package_dir = Path(__file__).resolve().parent
    for candidate in (package_dir / "sample_data", package_dir.parent.parent / "sample_data"):
        if (candidate / SAMPLE_SLIDE).exists():
            return candidate
    raise FileNotFoundError(
        f"the bundled sample slide {SAMPLE_SLIDE} is missing from {package_dir / 'sample_data'}; "
        "reinstall napari-stpredict"
    )
