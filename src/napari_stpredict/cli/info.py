"""``stpredict info``: slide summaries and thumbnails with the tissue outlined."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..errors import StPredictError
from ._common import output_names, slide_error, slide_paths

__all__ = ["add", "run"]


def add(sub) -> None:
    """Add the command's parser to ``sub``."""
    p = sub.add_parser("info", help="summarise slides and write thumbnails with the tissue outlined")
    p.add_argument("slides", nargs="*", type=Path, help="slide files")
    p.add_argument("--sample", action="store_true", help="use the bundled sample slide (her2st C2)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--mpp", type=float, default=None, help="µm per pixel for slides that do not record it")
    p.add_argument("--thumbnail-size", type=int, default=1024, help="longer side of the thumbnail in px")
    p.set_defaults(func=run)


def run(args) -> int:
    """Run the command; returns its exit status."""
    from ..io.atomic import atomic_path
    from ..io.slide import open_slide
    from ..tissue import draw_outline, slide_tissue_mask

    slides = slide_paths(args)
    if not slides:
        print("stpredict info: give slide files or --sample", file=sys.stderr)
        return 2
    if args.out.exists() and not args.out.is_dir():
        print(f"error: --out {args.out}: exists and is not a folder", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    names = output_names(slides)
    failures = 0
    for path in slides:
        try:
            with open_slide(path, mpp=args.mpp) as slide:
                summary = slide.summary()
                tissue = slide_tissue_mask(slide, max_size=args.thumbnail_size, require_tissue=False)
                summary["tissue_fraction"] = round(tissue.fraction, 4)
                thumb = draw_outline(slide.thumbnail(args.thumbnail_size), tissue.mask)
        except (StPredictError, ValueError, OSError) as exc:
            print(slide_error(path, exc), file=sys.stderr)
            failures += 1
            continue
        stem = names[path]
        json_path = args.out / f"{stem}_summary.json"
        png_path = args.out / f"{stem}_thumbnail.png"
        with atomic_path(json_path) as tmp:
            tmp.write_text(json.dumps(summary, indent=2), encoding="utf-8")
        with atomic_path(png_path) as tmp:
            from PIL import Image

            Image.fromarray(thumb).save(tmp, format="PNG")
        mpp = summary["mpp_x"]
        resolution = "mpp unknown (the file does not record it; give --mpp)" if mpp is None else f"mpp {mpp}"
        print(
            f"{slide.name}: {summary['dimensions'][0]}x{summary['dimensions'][1]} px, "
            f"{summary['level_count']} levels, {resolution}, "
            f"tissue {summary['tissue_fraction']:.0%} -> {json_path}, {png_path}"
        )
    return 1 if failures else 0
