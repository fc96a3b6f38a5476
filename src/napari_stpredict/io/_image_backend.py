"""Plain JPEG and PNG images as single-level slides (the mpp must come from the caller)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import SlideFormatError, SlideReadError
from .base import ArraySlide

__all__ = ["PillowSlide"]


class PillowSlide(ArraySlide):
    """A JPEG or PNG image loaded into memory, with a halving pyramid for display."""

    backend = "pillow"

    def __init__(self, path: Path) -> None:
        from PIL import Image

        from ._guards import MAX_UNPYRAMIDED_PIXELS

        # Pillow's decompression-bomb guard stays on, at the size this reader accepts.
        Image.MAX_IMAGE_PIXELS = MAX_UNPYRAMIDED_PIXELS
        path = Path(path)
        try:
            with Image.open(path) as im:
                # Checked from the header, before decoding: a small file can declare billions
                # of pixels (a "decompression bomb"); Pillow's own guard is left in place.
                width, height = im.size
                if width * height > MAX_UNPYRAMIDED_PIXELS:
                    raise SlideFormatError(
                        f"{path}: the image declares {width:,} x {height:,} px, more than a plain image can be "
                        f"loaded into memory ({MAX_UNPYRAMIDED_PIXELS:,} px); save it as a pyramidal TIFF"
                    )
                fmt = (im.format or "image").lower()
                # A camera or scanner that writes an EXIF orientation means the image as
                # every viewer shows it; spots and regions are placed on that one.
                from PIL import ImageOps

                image = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
        except SlideFormatError:
            raise
        except Image.DecompressionBombError as exc:
            raise SlideFormatError(f"{path}: {exc}") from exc
        except (OSError, SyntaxError, ValueError) as exc:
            raise SlideReadError(f"{path}: cannot decode the image ({exc}); it may be truncated or corrupt") from exc
        levels = 1
        while max(image.shape[:2]) / 2**levels >= 1024:
            levels += 1
        super().__init__(image, levels=levels, name=path.name, vendor=fmt)
        self.path = path
