"""What the Qt panels of the dock share: labels of choices, notifications, the caption."""

from __future__ import annotations

import numpy as np
from qtpy.QtCore import Qt

__all__ = ["canvas_caption", "notify_error", "notify_warning"]

BUNDLED = "Bundled model (her2st breast cancer)"
FROM_FILE = "Checkpoint file..."
MODE_ABSOLUTE = "Calibrated (absolute units)"
SORT_NAME = "Genes A-Z"
COLOURS_FIXED = "Colours: training"
COLOURS_SLIDE = "Colours: this slide"
SORT_ACCURACY = "Best r first"
GENE_ROLE = Qt.UserRole  # an item's gene name; its text also shows the held-out r
MODE_SLIDE = "Automatic per slide"
WHOLE_TISSUE = "(whole tissue)"
DISCLAIMER = "Research use only. Not for diagnosis."


def _same(a, b) -> bool:
    """Whether a layer property already has a value (arrays, tuples or plain values)."""
    try:
        return bool(np.array_equal(np.asarray(a), np.asarray(b)))
    except (TypeError, ValueError):
        return a == b


def notify_error(message: str) -> None:
    from napari.utils.notifications import show_error

    show_error(message)


def notify_warning(message: str) -> None:
    from napari.utils.notifications import show_warning

    show_warning(message)


def canvas_caption(viewer):
    """The viewer's canvas text overlay (``viewer.canvas.overlays.text`` since napari 0.9,
    where ``viewer.text_overlay`` is deprecated)."""
    canvas = getattr(viewer, "canvas", None)
    overlays = getattr(canvas, "overlays", None)
    return overlays.text if overlays is not None and hasattr(overlays, "text") else viewer.text_overlay
