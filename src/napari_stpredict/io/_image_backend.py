"""Plain JPEG and PNG images as single-level slides (the mpp must come from the caller)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import SlideReadError
from .slide import ArraySlide

__all__ = ["PillowSlide"]


class PillowSlide(ArraySlide):
    """A JPEG or PNG image loaded into memory, with a halving pyramid for display."""

    backend = "pillow"

    def __init__(self, path: Path) -> None:
        from PIL import Image

        Image.MAX_IMAGE_PIXELS = None  # H&E images are legitimately huge
        path = Path(path)
        try:
            with Image.open(path) as im:
                fmt = (im.format or "image").lower()
                image = np.asarray(im.convert("RGB"))
        except (OSError, SyntaxError, ValueError) as exc:
            raise SlideReadError(f"{path}: cannot decode the image ({exc}); it may be truncated or corrupt") from exc
        levels = 1
        while max(image.shape[:2]) / 2**levels >= 1024:
            levels += 1
        super().__init__(image, levels=levels, name=path.name, vendor=fmt)
        self.path = path
