"""Does a slide look like brightfield H&E? A check on colour statistics of its thumbnail.

The bundled model has only seen H&E: anything else (fluorescence, IHC with DAB, a
grayscale scan, an empty image, a photograph) gives maps that look as confident as
real ones and mean nothing. This module decides from optical-density and hue
statistics of the tissue pixels, before any slow work starts. Pure numpy.

What separates the cases (measured on the real slides in ``shared/data`` and the
images scikit-image ships, see tests/test_stain.py):

- brightfield images have a bright background (glass); fluorescence is dark around a
  dim signal;
- hematoxylin and eosin both absorb green most, so in H&E tissue green is the lowest
  channel (70-100 % of tissue pixels on every H&E slide here); DAB is brown (blue the
  lowest channel, red the highest): 0 % of H&E tissue pixels, 20-60 % on IHC;
- a grayscale scan has no colour at all.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .errors import StainCheckError

__all__ = ["StainCheck", "StainCheckError", "check_stain", "check_slide_stain"]

#: Thresholds, each with the margin it keeps on the real images in the tests.
DARK_BACKGROUND = 160  # brightest 10 % below this (0-255): no glass, a dark-field image (DAPI slide: 75; H&E >= 200)
PADDING_LUMINANCE = 20  # near-black pixels are padding or scanner borders, not tissue
TISSUE_OD = 0.15  # summed optical density above the glass colour that counts as stained
MIN_TISSUE_SHARE = 0.002  # fewer stained pixels than this: blank
GRAY_CHROMA = 0.04  # median saturation of tissue pixels (grayscale: 0.000; palest H&E here: 0.08)
BROWN_REFUSE = 0.10  # share of brown (DAB-like) tissue pixels (H&E here: <= 0.001; IHC: >= 0.2)
HE_HUE_REFUSE = 0.45  # share of tissue pixels with green the lowest channel (H&E here: >= 0.73)
HE_HUE_WARN = 0.65


@dataclass(frozen=True)
class StainCheck:
    """The verdict of `check_stain`.

    Attributes
    ----------
    kind : str
        ``"he"`` (looks like H&E), ``"unusual_colours"`` (H&E-like but atypical: a
        warning), ``"fluorescence"``, ``"blank"``, ``"grayscale"``, ``"dab_brown"`` (IHC or
        other brown images) or ``"not_he"`` (colours of no H&E stain, e.g. a photograph).
    action : str
        ``"ok"``, ``"warn"`` (predict, but tell the user) or ``"refuse"``.
    message : str
        What was seen and what it means, for the user.
    stats : dict
        The measured statistics.
    """

    kind: str
    action: str
    message: str
    stats: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True unless the check refuses the slide."""
        return self.action != "refuse"

    def to_dict(self) -> dict[str, Any]:
        """Plain values (for ``Prediction.meta``, YAML, JSON)."""
        return asdict(self)


def _stats(rgb: np.ndarray) -> dict[str, float]:
    # Medians and shares of a million pixels do not need all of them: every n-th row and
    # column of a large thumbnail (about 512 px a side) gives the same figures 4x faster.
    step = max(1, int(max(rgb.shape[:2]) // 512))
    pixels = rgb[::step, ::step].reshape(-1, 3).astype(np.float32)
    luminance = pixels.mean(1)
    content = pixels[luminance >= PADDING_LUMINANCE]
    if len(content) == 0:
        return {"background": 0.0, "median_luminance": float(np.median(luminance)), "tissue_share": 0.0}
    brightness = content.sum(1)
    glass = np.median(content[brightness >= np.percentile(brightness, 90)], axis=0)
    od = -np.log10(np.clip((content + 1.0) / (glass + 1.0), 1e-3, 1.0)).sum(1)
    tissue = content[od > TISSUE_OD].astype(np.int16)
    stats = {
        "background": float(glass.mean()),
        "median_luminance": float(np.median(luminance)),
        "tissue_share": float(len(tissue) / len(content)),
    }
    if len(tissue) == 0:
        return stats
    r, g, b = tissue[:, 0], tissue[:, 1], tissue[:, 2]
    brightest = tissue.max(1)
    stats["chroma"] = float(np.median((brightest - tissue.min(1)) / np.maximum(brightest, 1)))
    stats["he_hue_share"] = float(np.mean((g <= r) & (g <= b)))
    stats["brown_share"] = float(np.mean((r >= g) & (g > b + 5) & (r - b > 25)))
    return stats


def check_stain(thumbnail: np.ndarray) -> StainCheck:
    """Decide whether an RGB thumbnail of a whole slide looks like brightfield H&E.

    Parameters
    ----------
    thumbnail : numpy.ndarray
        ``(height, width, 3)`` uint8 RGB image of the whole slide (or a large part of it;
        a few hundred pixels a side is enough).

    Returns
    -------
    StainCheck
        Refusals: fluorescence (dark background), blank (nothing stained), grayscale (no
        colour to read stains from), brown DAB-like colours (IHC) and colours of no H&E
        stain. A warning: H&E-like but with an unusual share of off-stain colours.
    """
    rgb = np.asarray(thumbnail)
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[..., None], 3, axis=-1)
    rgb = rgb[..., :3]
    s = _stats(rgb)
    rounded = {k: round(v, 3) for k, v in s.items()}
    if s["background"] < DARK_BACKGROUND and s["median_luminance"] < 80:
        return StainCheck(
            "fluorescence",
            "refuse",
            "the image is dark with a dim signal (brightest tenth at "
            f"{s['background']:.0f}/255): a fluorescence or dark-field image, not brightfield H&E. "
            "The model was trained on H&E only; its predictions here would be meaningless.",
            rounded,
        )
    if s["tissue_share"] < MIN_TISSUE_SHARE:
        return StainCheck("blank", "refuse", "nothing stained was found: the image is blank or nearly so.", rounded)
    if s["chroma"] < GRAY_CHROMA:
        return StainCheck(
            "grayscale",
            "refuse",
            f"the image has no colour (median saturation {s['chroma']:.3f}): a grayscale scan. The model "
            "reads hematoxylin and eosin from colour; it needs the RGB H&E image.",
            rounded,
        )
    if s["brown_share"] >= BROWN_REFUSE:
        return StainCheck(
            "dab_brown",
            "refuse",
            f"{s['brown_share']:.0%} of the stained pixels are brown, as DAB is in immunohistochemistry "
            "(H&E has almost none): this looks like an IHC slide or another non-H&E image. The model "
            "was trained on H&E only.",
            rounded,
        )
    if s["he_hue_share"] < HE_HUE_REFUSE:
        return StainCheck(
            "not_he",
            "refuse",
            f"only {s['he_hue_share']:.0%} of the stained pixels have H&E colours (pink to purple; "
            "H&E slides have 70 % or more): this does not look like an H&E section (another stain, "
            "or not a microscope image).",
            rounded,
        )
    if s["he_hue_share"] < HE_HUE_WARN:
        return StainCheck(
            "unusual_colours",
            "warn",
            f"only {s['he_hue_share']:.0%} of the stained pixels have typical H&E colours: an unusual "
            "stain, a colour cast or pen marks. Check the maps against the tissue.",
            rounded,
        )
    return StainCheck("he", "ok", "colours are those of an H&E section.", rounded)


def check_slide_stain(slide, *, max_size: int = 1024) -> StainCheck:
    """`check_stain` on a `Slide`'s thumbnail."""
    return check_stain(slide.thumbnail(max_size))
