"""Read model patches: squares of a physical size centred on level-0 points."""

from __future__ import annotations

import numpy as np

from .base import Slide

__all__ = ["read_patches"]


def read_patches(slide: Slide, l0_centres: np.ndarray, patch_um: float, input_px: int) -> np.ndarray:
    """Read square patches of ``patch_um`` centred on level-0 points, resampled to ``input_px``.

    Returns ``(n, input_px, input_px, 3)`` uint8.
    """
    mpp_x, mpp_y = slide.mpp
    if mpp_x is None or mpp_y is None:
        raise ValueError(f"{slide.name}: its resolution (mpp) is unknown; pass mpp when opening it")
    half_x, half_y = patch_um / 2 / mpp_x, patch_um / 2 / mpp_y
    out = np.empty((len(l0_centres), input_px, input_px, 3), np.uint8)
    target_mpp = patch_um / input_px
    for i, (cx, cy) in enumerate(np.asarray(l0_centres, float)):
        out[i] = slide.read_region_at_mpp(
            (int(round(cx - half_x)), int(round(cy - half_y))), (input_px, input_px), target_mpp
        )
    return out
