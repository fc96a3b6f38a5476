"""A PNG overview: slide thumbnail, a heatmap over the tissue and the tumour contour."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["overview_image", "colormap", "caption_image"]

# Viridis at 9 anchors (matplotlib's values), interpolated: perceptually uniform.
_VIRIDIS = np.array(
    [
        [68, 1, 84],
        [71, 44, 122],
        [59, 81, 139],
        [44, 113, 142],
        [33, 144, 141],
        [39, 173, 129],
        [92, 200, 99],
        [170, 220, 50],
        [253, 231, 37],
    ],
    np.float32,
)


def colormap(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Map values to viridis RGB uint8 (NaN -> 0)."""
    t = np.clip((np.nan_to_num(values, nan=lo) - lo) / max(hi - lo, 1e-12), 0, 1) * (len(_VIRIDIS) - 1)
    i = np.minimum(t.astype(int), len(_VIRIDIS) - 2)
    f = (t - i)[..., None]
    return ((1 - f) * _VIRIDIS[i] + f * _VIRIDIS[i + 1]).astype(np.uint8)


def overview_image(
    slide,
    heatmap,
    tumor_raster: np.ndarray | None = None,
    *,
    max_size: int = 1024,
    alpha: float = 0.6,
    limits: tuple[float, float] | None = None,
) -> np.ndarray:
    """Thumbnail with ``heatmap`` blended over its spots (linearly interpolated between spot
    centres, as napari shows it) and the tumour mask outlined in red.

    ``limits`` are the colour range (default: the map's 2nd-98th percentile).
    """
    from skimage.segmentation import find_boundaries

    thumb = slide.thumbnail(max_size).astype(np.float32)
    h, w = thumb.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    l0 = np.column_stack([(xx.ravel() + 0.5) * slide.dimensions[0] / w, (yy.ravel() + 0.5) * slide.dimensions[1] / h])
    values = heatmap.sample_smooth(l0).reshape(h, w)
    valid = ~np.isnan(values)
    if valid.any():
        lo, hi = limits if limits is not None else np.nanpercentile(values, [2, 98])
        thumb[valid] = (1 - alpha) * thumb[valid] + alpha * colormap(values[valid], lo, hi)
    out = thumb.astype(np.uint8)
    if tumor_raster is not None:
        from dataclasses import replace

        tumour = replace(heatmap, raster=tumor_raster.astype(np.float32))
        mask = np.nan_to_num(tumour.sample(l0).reshape(h, w)) > 0
        edge = find_boundaries(mask, mode="inner")
        out[edge] = (230, 0, 0)
    return out


def caption_image(
    image: np.ndarray,
    lines: list[str],
    *,
    warnings: list[str] | None = None,
    colourbar: tuple[float, float, str] | None = None,
    scale_bar: tuple[float, str] | None = None,
) -> np.ndarray:
    """``image`` with a white strip below it: a colour bar and a scale bar, then ``warnings``
    in red and ``lines``, wrapped to the image width (DejaVu Sans, which draws "µm").

    Parameters
    ----------
    colourbar : (low, high, label), optional
        The heatmap's colour range and what it shows.
    scale_bar : (length in image pixels, label), optional
        E.g. ``(120.5, "1 mm")``.
    """
    import textwrap

    from PIL import Image, ImageDraw

    font = _font(11)
    width = image.shape[1]
    chars = max(20, (width - 16) // 6)
    wrapped = [(t, (200, 0, 0)) for w in (warnings or []) for t in textwrap.wrap(w, chars)]
    wrapped += [(t, (20, 20, 20)) for line in lines for t in textwrap.wrap(line, chars)]
    line_h = 14
    bars_h = 34 if (colourbar or scale_bar) else 0
    strip = Image.new("RGB", (width, bars_h + 8 + line_h * len(wrapped)), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    if colourbar is not None:
        lo, hi, label = colourbar
        bar_w = min(256, width // 2 - 16)
        gradient = colormap(np.linspace(0, 1, bar_w)[None, :].repeat(10, 0), 0.0, 1.0)
        strip.paste(Image.fromarray(gradient), (8, 6))
        draw.text((8, 18), f"{lo:.2f}", fill=(20, 20, 20), font=font)
        draw.text((8 + bar_w - 30, 18), f"{hi:.2f}", fill=(20, 20, 20), font=font)
        draw.text((8 + bar_w + 8, 4), label, fill=(20, 20, 20), font=font)
    if scale_bar is not None:
        length, label = scale_bar
        x1 = width - 8
        x0 = int(round(x1 - length))
        draw.rectangle([x0, 8, x1, 12], fill=(20, 20, 20))
        draw.text((x0, 18), label, fill=(20, 20, 20), font=font)
    for i, (text, colour) in enumerate(wrapped):
        draw.text((8, bars_h + 4 + i * line_h), text, fill=colour, font=font)
    return np.vstack([np.asarray(image, np.uint8), np.asarray(strip)])


def _font(size: int):
    """DejaVu Sans from matplotlib's data (a dependency): Pillow's built-in bitmap font
    has no "µ" and drew "500 µm" as "500 ?m"; found without importing matplotlib."""
    import importlib.util

    from PIL import ImageFont

    spec = importlib.util.find_spec("matplotlib")
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(folder) / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"
        if path.is_file():
            return ImageFont.truetype(str(path), size)
    return ImageFont.load_default(size=size)
