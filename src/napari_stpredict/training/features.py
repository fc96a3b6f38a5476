"""Cheap colour, stain and texture statistics of patches: the ridge baseline's inputs."""

from __future__ import annotations

import numpy as np

__all__ = ["patch_features"]


def patch_features(patches: np.ndarray) -> np.ndarray:
    """Per-patch statistics ``(n, 33)``: RGB and H/E/D stain moments, texture and composition.

    Mean, SD and 10th/90th percentiles of R, G, B and of hematoxylin, eosin and DAB
    optical densities (24); mean gradient magnitude at two scales (2); fractions of
    white (fat, lumen), dark-nuclear and pink pixels (3); local variance of hematoxylin at
    two scales (2); saturation mean and SD (2).
    """
    from scipy import ndimage
    from skimage.color import rgb2hed

    feats = []
    for patch in np.asarray(patches):
        rgb = patch.astype(np.float32) / 255.0
        hed = rgb2hed(patch)
        f = []
        for channel in list(np.moveaxis(rgb, -1, 0)) + list(np.moveaxis(hed, -1, 0)):
            f += [channel.mean(), channel.std(), *np.percentile(channel, [10, 90])]
        grey = rgb.mean(-1)
        for sigma in (1.0, 3.0):
            f.append(ndimage.gaussian_gradient_magnitude(grey, sigma).mean())
        mx, mn = rgb.max(-1), rgb.min(-1)
        sat = (mx - mn) / np.maximum(mx, 1e-3)
        f += [
            (grey > 0.85).mean(),
            (hed[..., 0] > np.percentile(hed[..., 0], 50) + 0.02).mean(),
            ((rgb[..., 0] > rgb[..., 2]) & (sat > 0.15)).mean(),
        ]
        h = hed[..., 0]
        for size in (3, 9):
            m = ndimage.uniform_filter(h, size)
            f.append((ndimage.uniform_filter(h * h, size) - m * m).mean())
        f += [sat.mean(), sat.std()]
        feats.append(f)
    return np.asarray(feats, np.float32)
