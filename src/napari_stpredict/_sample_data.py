"""npe2 sample data contribution: the bundled her2st C2 slide (File > Open Sample)."""

from __future__ import annotations

__all__ = ["her2st_c2_sample"]


def her2st_c2_sample():
    """Open the bundled her2st section C2 H&E as a lazy multiscale layer."""
    from ._reader import slide_layer_data
    from ._resources import SAMPLE_SLIDE, sample_data_dir
    from .io.slide import open_slide

    return [slide_layer_data(open_slide(sample_data_dir() / SAMPLE_SLIDE))]
