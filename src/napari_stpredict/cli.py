"""Command-line interface: ``stpredict <command>``.

Commands
--------
info
    Open slides (or the bundled sample), write a JSON summary and a thumbnail PNG with
    the detected tissue outlined.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import StPredictError

__all__ = ["main"]


def _add_info(sub) -> None:
    p = sub.add_parser("info", help="summarise slides and write thumbnails with the tissue outlined")
    p.add_argument("slides", nargs="*", type=Path, help="slide files")
    p.add_argument("--sample", action="store_true", help="use the bundled sample slide (her2st C2)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--mpp", type=float, default=None, help="µm per pixel for slides that do not record it")
    p.add_argument("--thumbnail-size", type=int, default=1024, help="longer side of the thumbnail in px")
    p.set_defaults(func=_cmd_info)


def _cmd_info(args) -> int:
    from .io.atomic import atomic_path
    from .io.slide import open_slide
    from .tissue import slide_tissue_mask

    slides = list(args.slides)
    if args.sample:
        from ._resources import SAMPLE_SLIDE, sample_data_dir

        slides.append(sample_data_dir() / SAMPLE_SLIDE)
    if not slides:
        print("stpredict info: give slide files or --sample", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    failures = 0
    for path in slides:
        try:
            with open_slide(path, mpp=args.mpp) as slide:
                summary = slide.summary()
                tissue = slide_tissue_mask(slide, max_size=args.thumbnail_size, require_tissue=False)
                summary["tissue_fraction"] = round(tissue.fraction, 4)
                thumb = _outline(slide.thumbnail(args.thumbnail_size), tissue.mask)
        except StPredictError as exc:
            print(f"error: {exc}", file=sys.stderr)
            failures += 1
            continue
        stem = Path(slide.name).stem
        json_path = args.out / f"{stem}_summary.json"
        png_path = args.out / f"{stem}_thumbnail.png"
        with atomic_path(json_path) as tmp:
            tmp.write_text(json.dumps(summary, indent=2), encoding="utf-8")
        with atomic_path(png_path) as tmp:
            from PIL import Image

            Image.fromarray(thumb).save(tmp, format="PNG")
        print(f"{slide.name}: {summary['dimensions'][0]}x{summary['dimensions'][1]} px, "
              f"{summary['level_count']} levels, mpp {summary['mpp_x']}, "
              f"tissue {summary['tissue_fraction']:.0%} -> {json_path}, {png_path}")
    return 1 if failures else 0


def _outline(thumb, mask):
    """Draw the tissue mask boundary in green on a copy of the thumbnail."""
    import numpy as np
    from skimage.segmentation import find_boundaries

    out = thumb.copy()
    edge = find_boundaries(mask, mode="outer")
    out[edge] = (0, 200, 0)
    return np.ascontiguousarray(out)


def build_parser() -> argparse.ArgumentParser:
    """The ``stpredict`` argument parser."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="stpredict",
        description="Predict spatial gene expression from H&E slides. Research use only; not for diagnosis.",
    )
    parser.add_argument("--version", action="version", version=f"napari-stpredict {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_info(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
