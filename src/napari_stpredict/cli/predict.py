"""``stpredict predict``: slides one after another, each into its own output folder."""

from __future__ import annotations

import sys
from pathlib import Path

from ..errors import StPredictError
from ._common import add_prediction_options, load_checked, output_names, refused_folders, slide_error, slide_paths

__all__ = ["add", "run"]


def add(sub) -> None:
    """Add the command's parser to ``sub``."""
    p = sub.add_parser("predict", help="predict gene expression over slides and export maps")
    p.add_argument("slides", nargs="*", type=Path, help="slide files")
    p.add_argument("--sample", action="store_true", help="also predict the bundled sample slide (her2st C2)")
    p.add_argument("--out", type=Path, required=True, help="output folder (one sub-folder per slide)")
    add_prediction_options(p)
    p.add_argument("--no-cache", action="store_true", help="always run the model")
    p.add_argument(
        "--pseudonymize",
        action="store_true",
        help="leave the slide's file name (e.g. a TCGA barcode) out of every output: folders, tables, "
        "GeoTIFF tags and config.yaml use an id made from the file's content (slide-<12 hex>); "
        "the terminal shows which file got which id, nothing else records it",
    )
    p.set_defaults(func=run)


def run(args) -> int:
    """Run the command; returns its exit status."""
    from tqdm import tqdm

    from ..inference.job import predict_to_folder, pseudonym

    slides = slide_paths(args)
    if not slides:
        print("stpredict predict: give slide files or --sample", file=sys.stderr)
        return 2
    names = output_names(slides)
    shown = {path: pseudonym(path) if args.pseudonymize and path.is_file() else None for path in slides}
    folders = {path: args.out / (shown[path] or names[path]) for path in slides}
    refused = refused_folders(folders)
    for problem in refused:
        print(f"error: {problem}", file=sys.stderr)
    if refused:
        return 2
    checked = load_checked(args)
    if checked is None:
        return 2
    options, model, model_path = checked
    failures = 0
    for path in slides:
        bars: list = []  # created at the first spot: no bar for a cache hit or the quick stages

        def show(progress: dict, name=path.name, bars=bars) -> None:
            if progress.get("stage") != "predict":
                return
            if not bars:
                bars.append(tqdm(total=progress["total"], unit="spot", desc=name, dynamic_ncols=True))
            bars[0].n = progress["done"]
            bars[0].refresh()

        try:
            shown_as = shown[path]
            try:
                outcome = predict_to_folder(
                    path,
                    model,
                    model_path,
                    options,
                    folders[path],
                    shown_as=shown_as,
                    progress=show,
                )
            finally:
                for bar in bars:
                    bar.close()  # so anything printed next starts on a line of its own
            _report(outcome.slide, outcome.prediction, outcome.mask, outcome.folder, shown_as=shown_as)
        except (StPredictError, ValueError, OSError) as exc:
            print(slide_error(path, exc), file=sys.stderr)
            failures += 1
    return 1 if failures else 0


def _report(slide, prediction, mask, out: Path, shown_as: str | None = None) -> None:
    from ..inference.trust import trust_lines

    verdict = prediction.trust.domain.verdict
    source = "cached" if prediction.meta.cache == "hit" else "predicted"
    name = f"{slide.name} (as {shown_as})" if shown_as else slide.name
    print(
        f"{name}: {len(prediction)} spots ({source}), {verdict}, tumour {mask.fraction:.0%} of "
        f"tissue (threshold {mask.describe()}) -> {out}"
    )
    for line in trust_lines(prediction.meta) + ([mask.note] if mask.note else []):
        print(f"  warning: {slide.name}: {line}", file=sys.stderr)
