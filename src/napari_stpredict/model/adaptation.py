"""Per-slide adaptation of the image features, before retrieval (issue "transfer").

A slide of a new patient, a new lab or a new scanner shifts the image encoder's pooled
backbone features as a whole (stain, thickness, focus): every patch of the slide moves
the same way, and the retrieval then reads the wrong reference spots everywhere. The
adaptation removes that slide-wide shift without labels:

- ``"centre"``: each feature's slide mean is moved onto its mean over the model's
  training images, ``f' = f - mean_slide + mean_train``;
- ``"standardise"``: also the slide's spread onto the training spread,
  ``f' = (f - mean_slide) / sd_slide * sd_train + mean_train`` (feature
  standardisation; CORAL without the cross-covariances; AdaBN on the last layer).

The slide's statistics come from its own tissue patches (the whole tissue, never only a
region of interest: a region is often all tumour, and centring it would erase what it
shows). The training statistics come from the training images the checkpoint already
holds for its out-of-domain score. The out-of-domain distance is always measured on the
*raw* features, so adaptation cannot make an unfamiliar slide look familiar.

The same rule is applied wherever the model meets a section: the whole-slide engine, the
evaluation of held-out sections and, per training section, the tumour calibration.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "ADAPTATION_MODES",
    "MIN_PATCHES",
    "FeatureStats",
    "SlideAdaptation",
    "estimate_adaptation",
]

#: ``"none"`` turns adaptation off.
ADAPTATION_MODES = ("none", "centre", "standardise")
#: Fewer tissue patches than this give statistics too noisy to adapt to: left unadapted.
MIN_PATCHES = 32
#: A feature whose spread on the slide is under this share of its training spread is not
#: rescaled (a near-constant feature would be blown up).
_MIN_SD_RATIO = 0.1


@dataclass(frozen=True)
class FeatureStats:
    """Per-feature mean and standard deviation of pooled backbone features."""

    mean: torch.Tensor
    sd: torch.Tensor
    n: int

    @classmethod
    def of(cls, features: torch.Tensor | np.ndarray) -> FeatureStats:
        """Statistics of ``(n, d)`` features (float64 for the sums, float32 stored)."""
        f = torch.as_tensor(np.asarray(features) if not isinstance(features, torch.Tensor) else features)
        f = f.double()
        return cls(mean=f.mean(0).float(), sd=f.std(0, unbiased=False).float(), n=int(f.shape[0]))


@dataclass(frozen=True)
class SlideAdaptation:
    """The affine map ``f' = f * scale + shift`` that adapts one slide's features.

    Attributes
    ----------
    mode : str
        ``"centre"`` or ``"standardise"``.
    scale, shift : torch.Tensor
        Per feature, ``(d,)``.
    n_patches : int
        Tissue patches the slide's statistics were measured on.
    shift_size : float
        How far the slide's mean was moved, in training standard deviations (root mean
        square over features): 0 for a slide like the training average; recorded in the
        prediction so a user can see how much the slide needed.
    """

    mode: str
    scale: torch.Tensor
    shift: torch.Tensor
    n_patches: int
    shift_size: float

    def apply(self, features: torch.Tensor) -> torch.Tensor:
        """Adapted ``(n, d)`` features (on the features' device)."""
        scale = self.scale.to(features.device, features.dtype)
        shift = self.shift.to(features.device, features.dtype)
        return features * scale + shift

    def summary(self) -> dict:
        """Plain values for a prediction's metadata."""
        return {"mode": self.mode, "n_patches": self.n_patches, "shift_size": round(self.shift_size, 4)}


def estimate_adaptation(
    slide_features: torch.Tensor | np.ndarray, target: FeatureStats, mode: str
) -> SlideAdaptation | None:
    """The adaptation of a slide whose tissue patches have ``slide_features``.

    Parameters
    ----------
    slide_features : (n, d) tensor or array
        Raw pooled backbone features of the slide's tissue patches (all, or an even
        sample).
    target : FeatureStats
        The training images' statistics (`STModel.training_feature_stats`).
    mode : {"none", "centre", "standardise"}

    Returns
    -------
    SlideAdaptation or None
        None for ``"none"`` and for fewer than `MIN_PATCHES` patches.
    """
    if mode not in ADAPTATION_MODES:
        raise ValueError(f"adaptation must be one of {', '.join(ADAPTATION_MODES)}, got {mode!r}")
    if mode == "none" or len(slide_features) < MIN_PATCHES:
        return None
    source = FeatureStats.of(slide_features)
    if source.mean.shape != target.mean.shape:
        raise ValueError(
            f"slide features have {source.mean.shape[0]} values per patch, the model's training statistics "
            f"{target.mean.shape[0]}"
        )
    target_sd = target.sd.clamp_min(1e-6)
    shift_size = float(torch.sqrt((((source.mean - target.mean) / target_sd) ** 2).mean()))
    if mode == "centre":
        scale = torch.ones_like(source.mean)
    else:
        usable = source.sd > _MIN_SD_RATIO * target_sd
        scale = torch.where(usable, target_sd / source.sd.clamp_min(1e-12), torch.ones_like(source.sd))
    shift = target.mean - source.mean * scale
    return SlideAdaptation(mode=mode, scale=scale, shift=shift, n_patches=source.n, shift_size=shift_size)


def even_sample(n: int, at_most: int) -> np.ndarray:
    """Indices of ``at_most`` of ``n`` items spread evenly (all when ``n <= at_most``):
    the grid is ordered row by row, so this samples the whole tissue."""
    if n <= at_most:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, at_most).round().astype(np.int64))
