"""Scan resolutions (µm per pixel): which values are plausible, and pairs checked alike
for a file's tags, ``--mpp`` and the dock's Resolution field.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ._guards import MIN_PLAUSIBLE_MPP

__all__ = ["MAX_PLAUSIBLE_MPP", "mpp_pair", "plausible_mpp"]

#: An mpp above this is no microscope scan: 72 or 96 dpi written by image tools as a
#: default gives 352.8 or 264.6 µm/px, which must be reported as unknown, not used.
MAX_PLAUSIBLE_MPP = 50.0


def plausible_mpp(value: Any) -> float | None:
    """Return ``value`` as a float µm/px if it is a plausible scan resolution, else None.

    Parameters
    ----------
    value : Any
        A number or numeric string (for example from slide properties), or None.

    Returns
    -------
    float or None
        The resolution, or None when it is missing, not finite, below
        ``MIN_PLAUSIBLE_MPP`` (finer than light microscopy) or above `MAX_PLAUSIBLE_MPP`
        (a default dpi, not a measurement): treated as unrecorded, so the user is asked
        for ``--mpp``.
    """
    if value is None:
        return None
    try:
        mpp = float(value)
    except (TypeError, ValueError):
        return None
    # Finer than any light microscope resolves: corrupt or unit-confused tags (a file
    # claiming 2.3e-6 µm/px would make tissue detection ask for a thousand terabytes).
    if not math.isfinite(mpp) or mpp < MIN_PLAUSIBLE_MPP or mpp > MAX_PLAUSIBLE_MPP:
        return None
    return mpp


def mpp_pair(mpp: float | tuple[float, float] | None, name: str) -> tuple[float | None, float | None]:
    """``(mpp_x, mpp_y)`` of one number or a pair, each checked to be a plausible scan
    resolution (None for none); a ValueError names ``name`` and the range otherwise."""
    if mpp is None:
        return (None, None)
    pair = (mpp, mpp) if np.isscalar(mpp) else tuple(mpp)  # type: ignore[arg-type]
    if len(pair) != 2:
        raise ValueError(f"{name}: mpp must be one number or (mpp_x, mpp_y), got {mpp!r}")
    checked = [plausible_mpp(v) for v in pair]
    if any(v is None or v < MIN_PLAUSIBLE_MPP for v in checked):
        raise ValueError(
            f"{name}: mpp must be a number of µm per pixel between {MIN_PLAUSIBLE_MPP} and {MAX_PLAUSIBLE_MPP}, "
            f"got {mpp!r}"
        )
    return (checked[0], checked[1])
