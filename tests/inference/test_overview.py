"""The overview picture's lettering and `info`'s line for a slide without a resolution."""

from __future__ import annotations

import numpy as np


def test_overview_font_draws_micrometres():
    """Issue 25.6: "500 µm" on scale bars; Pillow's built-in bitmap font has no "µ"."""
    from PIL import Image, ImageDraw, ImageFont

    from napari_stpredict.inference.overview import _font

    font = _font(11)
    assert isinstance(font, ImageFont.FreeTypeFont) and "DejaVu" in font.getname()[0]

    def drawn(text):
        image = Image.new("L", (40, 20), 0)
        ImageDraw.Draw(image).text((2, 2), text, fill=255, font=font)
        return np.asarray(image)

    assert drawn("µ").any() and not np.array_equal(drawn("µ"), drawn("\ue000"))  # not the missing-glyph box


def test_info_says_mpp_unknown_for_a_file_without_it(sample_slide_path, tmp_path, capsys):
    from PIL import Image

    from napari_stpredict.cli import main
    from napari_stpredict.io.slide import open_slide

    with open_slide(sample_slide_path) as slide:
        thumb = slide.read_level(slide.level_count - 1) if hasattr(slide, "read_level") else slide.thumbnail(1024)
    png = tmp_path / "no_mpp.png"
    Image.fromarray(np.asarray(thumb)[..., :3]).save(png)
    rc = main(["info", str(png), "--out", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert rc == 0 and "mpp unknown" in out and "mpp None" not in out
