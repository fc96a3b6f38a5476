"""Completion records: how a rerun knows which slides are done, and with what.

A slide's output folder appears whole or not at all (`io.atomic.atomic_folder`), and its
record is written inside it, so a folder with a readable record is a complete result. The
record holds the fingerprint of everything that made the result: the slide file, the
model file, the options that can change an output, the package version. A rerun reuses a
folder only when the fingerprint is the same; any change recomputes the slide.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

__all__ = ["RECORD_NAME", "complete_record", "fingerprint", "read_record", "write_record"]

RECORD_NAME = "cohort_record.json"
TILE_NAME = "cohort_tile.png"  # the slide's cell of cohort_overview.png, written beside the record
_FORMAT = 1


def fingerprint(slide_fingerprint: str, model_sha1: str, settings: dict[str, Any], mpp: float | None) -> str:
    """SHA-1 over the slide's and model's identities, the result settings and the mpp.

    Parameters
    ----------
    slide_fingerprint : str
        `napari_stpredict.inference.cache.slide_fingerprint` of the file.
    model_sha1 : str
        SHA-1 of the checkpoint file.
    settings : dict
        `PredictOptions.result_settings` (run control excluded: batch size never changes
        a result).
    mpp : float, optional
        The slide's resolution from the manifest, if any.
    """
    from .._version import __version__

    payload = json.dumps(
        {
            "format": _FORMAT,
            "version": __version__,
            "slide": slide_fingerprint,
            "model": model_sha1,
            "settings": settings,
            "mpp": mpp,
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha1(payload.encode("utf-8")).hexdigest()


def write_record(folder: Path, record: dict[str, Any]) -> Path:
    """Write ``record`` (with its ``fingerprint``) into the slide's (temporary) folder."""
    path = folder / RECORD_NAME
    path.write_text(json.dumps({"format": _FORMAT, **record}, indent=1, default=_plain), encoding="utf-8")
    return path


def read_record(folder: Path) -> dict[str, Any] | None:
    """The folder's record, or None when there is none or it cannot be read."""
    path = folder / RECORD_NAME
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(record, dict) or record.get("format") != _FORMAT or "fingerprint" not in record:
        return None
    return record


def complete_record(folder: Path, fingerprint: str) -> dict[str, Any] | None:
    """The record of a complete output folder made with ``fingerprint``; None otherwise
    (no folder, a folder still being swapped, an unreadable record or other settings)."""
    from ..io.output_folder import is_complete_output

    record = read_record(folder) if is_complete_output(folder) else None
    return record if record is not None and record.get("fingerprint") == fingerprint else None


def _plain(value: Any) -> Any:
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
