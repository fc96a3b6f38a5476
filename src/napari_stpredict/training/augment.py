"""Augmentations fit for H&E, on batches of image tensors: flips, 90° rotations, stain jitter,
and coarse-scan simulation (resolution robustness)."""

from __future__ import annotations

import torch

__all__ = ["augment_batch", "coarse_scan"]

# Ruifrok & Johnston stain vectors (as skimage.color.rgb_from_hed): rows H, E, DAB.
_RGB_FROM_HED = torch.tensor([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
_HED_FROM_RGB = torch.linalg.inv(_RGB_FROM_HED)


def _hed_jitter(x: torch.Tensor, sigma: float, generator: torch.Generator | None) -> torch.Tensor:
    """Scale and shift each stain's optical density per image (Tellez et al. 2018)."""
    b = x.shape[0]
    od = -torch.log(x.clamp(min=1e-3))  # (B, 3, H, W) in [0, ~6.9]
    hed = torch.einsum("bchw,cd->bdhw", od, _HED_FROM_RGB.to(x.device))
    alpha = 1 + (torch.rand(b, 3, 1, 1, generator=generator) * 2 - 1).to(x.device) * sigma
    beta = (torch.rand(b, 3, 1, 1, generator=generator) * 2 - 1).to(x.device) * sigma
    hed = hed * alpha + beta
    od = torch.einsum("bdhw,dc->bchw", hed, _RGB_FROM_HED.to(x.device))
    return torch.exp(-od).clamp(0, 1)


def augment_batch(
    x: torch.Tensor, *, hed_sigma: float = 0.05, brightness: float = 0.05, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Augment RGB tensors in ``[0, 1]``, shape ``(B, 3, H, W)``: dihedral flips/rotations,
    stain (HED) jitter and mild brightness; each image gets its own draw."""
    b = x.shape[0]
    out = torch.empty_like(x)
    rot = torch.randint(0, 4, (b,), generator=generator)
    flip = torch.randint(0, 2, (b,), generator=generator)
    for i in range(b):
        xi = torch.rot90(x[i], int(rot[i]), dims=(1, 2))
        out[i] = xi.flip(2) if flip[i] else xi
    if hed_sigma > 0:
        out = _hed_jitter(out, hed_sigma, generator)
    if brightness > 0:
        shift = (torch.rand(b, 1, 1, 1, generator=generator) * 2 - 1).to(x.device) * brightness
        out = (out + shift).clamp(0, 1)
    return out


def coarse_scan(
    x: torch.Tensor, probability: float, max_ratio: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Make some patches look as if scanned at a coarser resolution.

    A slide coarser than the model's input (a 20x export, a Visium "hires" image at 3.2
    µm/px) reaches the model as a small region upsampled to ``input_px``; a model that only
    ever saw native-resolution patches reads that blur as different tissue. Each chosen
    patch is averaged down by a factor drawn log-uniformly in ``[1, max_ratio]`` and
    upsampled back bilinearly, as the slide reader does (`napari_stpredict.io.base.resize_rgb`).

    Parameters
    ----------
    x : torch.Tensor
        RGB in ``[0, 1]``, shape ``(B, 3, H, W)``.
    probability : float
        Share of the patches degraded (0 leaves the batch as it is).
    max_ratio : float
        Coarsest simulated scan, as a multiple of the model's input µm per pixel.
    """
    if probability <= 0 or max_ratio <= 1:
        return x
    import math

    import torch.nn.functional as F

    b, _, h, w = x.shape
    chosen = torch.rand(b, generator=generator) < probability
    ratios = torch.exp(torch.rand(b, generator=generator) * math.log(max_ratio))
    out = x.clone()
    for i in torch.nonzero(chosen).flatten().tolist():
        size = (max(2, round(h / float(ratios[i]))), max(2, round(w / float(ratios[i]))))
        small = F.interpolate(x[i : i + 1], size=size, mode="area")
        out[i : i + 1] = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False).clamp(0, 1)
    return out
