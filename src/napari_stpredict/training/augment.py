"""Augmentations fit for H&E, on batches of image tensors: flips, 90° rotations, stain jitter."""

from __future__ import annotations

import torch

__all__ = ["augment_batch"]

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
