"""The project's exceptions and warnings, in one place.

Every error names the file or parameter it is about, so that a message shown in a
napari notification or printed by the CLI is enough to act on.
"""

from __future__ import annotations

__all__ = [
    "StPredictError",
    "SlideError",
    "SlideNotFoundError",
    "SlideFormatError",
    "SlideReadError",
    "TissueMaskError",
    "StainCheckError",
    "OutputError",
    "PredictionCancelled",
    "StPredictWarning",
]


class StPredictError(Exception):
    """Base class of every error raised on purpose by napari-stpredict."""


class SlideError(StPredictError):
    """A slide file cannot be opened or read."""


class SlideNotFoundError(SlideError, FileNotFoundError):
    """The slide path does not exist."""


class SlideFormatError(SlideError, ValueError):
    """The file is not a slide, its format is unsupported, or its content contradicts its suffix."""


class SlideReadError(SlideError, OSError):
    """The file is a slide but is truncated or has corrupt data."""


class TissueMaskError(StPredictError, ValueError):
    """Tissue detection found no tissue, or got an unusable thumbnail."""


class StainCheckError(StPredictError, ValueError):
    """The slide does not look like brightfield H&E (fluorescence, IHC, grayscale, blank, ...),
    so the model's predictions on it would be meaningless."""


class OutputError(StPredictError, OSError):
    """Outputs cannot be written (full or read-only disk, a file where a folder should be)."""


class PredictionCancelled(StPredictError):
    """The run was cancelled; nothing was written."""


class StPredictWarning(UserWarning):
    """A warning about input that works but deserves attention."""
