"""What the commands share: the slides named, their output folders, the options of
``predict`` and ``cohort``, the checked model, one-line slide errors, a progress bar.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ..errors import StPredictError
from ..io.regions import parse_roi

__all__ = [
    "add_prediction_options",
    "check_predict_args",
    "drain_with_bar",
    "load_checked",
    "output_names",
    "refused_folders",
    "slide_error",
    "slide_paths",
]


def slide_paths(args) -> list[Path]:
    """The slides named on the command line, plus the bundled sample with --sample."""
    slides = list(args.slides)
    if args.sample:
        from .._resources import SAMPLE_SLIDE, sample_data_dir

        slides.append(sample_data_dir() / SAMPLE_SLIDE)
    return slides


def add_prediction_options(p) -> None:
    """The options ``predict`` and ``cohort`` share (`PredictOptions.from_args` reads them)."""
    p.add_argument("--genes", nargs="*", default=None, help="genes to export as GeoTIFF (default: ERBB2)")
    p.add_argument("--markers", nargs="*", default=None, help="tumour marker genes (default: the model's panel)")
    p.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="tumour score threshold (default: the model's, calibrated on its training data)",
    )
    p.add_argument(
        "--threshold-mode",
        choices=["auto", "absolute", "slide"],
        default="auto",
        help="tumour score units: 'absolute' (the training spots', comparable between slides; the "
        "default for calibrated models) or 'slide' (this slide's own, with an automatic threshold "
        "per slide, which always finds a tumour region)",
    )
    p.add_argument(
        "--tumour-out-of-domain",
        action="store_true",
        help="also call tumour where the model cannot judge it: out-of-domain spots and slides, and slides "
        "coarser than 2.5x the model's input resolution",
    )
    p.add_argument(
        "--no-stain-check",
        action="store_true",
        help="predict even on slides that do not look like H&E (fluorescence, IHC, grayscale)",
    )
    p.add_argument("--model", type=Path, default=None, help="checkpoint (default: the bundled model)")
    p.add_argument("--device", default="auto", help="auto (CUDA > MPS > CPU), cpu, cuda, cuda:1, mps")
    p.add_argument("--stride-um", type=float, default=None, help="spot spacing in µm (default: the patch size)")
    p.add_argument(
        "--batch-size",
        type=int,
        default=64,
        help="patches per model call (default 64; lower it if the GPU runs out of memory)",
    )
    p.add_argument(
        "--method",
        choices=["retrieval", "ridge"],
        default="retrieval",
        help="retrieval: mean of the most similar reference spots (the paper; default); "
        "ridge: the linear head fitted on the training embeddings",
    )
    p.add_argument(
        "--adaptation",
        choices=["none", "centre", "standardise"],
        default=None,
        help="per-slide adaptation of the image features to the training images before retrieval "
        "(default: the model's; none turns it off)",
    )
    p.add_argument(
        "--roi",
        default=None,
        help="region: x0,y0,x1,y1 in level-0 pixels, or a GeoJSON file of polygons (e.g. from QuPath)",
    )
    p.add_argument("--mpp", type=float, default=None, help="µm per pixel for slides that do not record it")
    p.add_argument(
        "--export",
        nargs="+",
        choices=["qupath", "spatialdata"],
        default=None,
        help="extra files per slide: qupath = qupath_detections.geojson, one QuPath detection per spot "
        "with the genes, confidence and tumour score as measurements (Measure > Show measurement maps); "
        "spatialdata = prediction.zarr, the slide image, spots, expression table and tumour contours "
        "for scverse and napari-spatialdata (needs napari-stpredict[spatialdata])",
    )
    p.add_argument(
        "--export-genes",
        choices=["chosen", "all"],
        default="chosen",
        help="genes in the --export files: those of --genes (default) or all the model's",
    )


def output_names(paths: list[Path]) -> dict[Path, str]:
    """One output folder name per slide path, unique within the command (`folder_names`)."""
    from ..inference.job import folder_names

    unique = list(dict.fromkeys(paths))  # a file named twice is one folder
    return dict(zip(unique, folder_names(unique), strict=True))


def refused_folders(folders: dict[Path, Path]) -> list[str]:
    """Why output folders cannot be written (a folder holding an input slide, or one the
    product did not write), for every slide of the command, before any work."""
    from ..io.output_folder import ForeignFolderError, check_output_folder

    inputs = list(folders)
    problems = []
    for folder in dict.fromkeys(folders.values()):
        try:
            check_output_folder(folder, inputs)
        except ForeignFolderError as exc:
            problems.append(str(exc))
    return problems


def check_predict_args(args, options, model) -> list[str]:
    """Problems with the options, found before any slide is read (empty when all is well)."""
    problems = options.problems(model)
    if args.out.exists() and not args.out.is_dir():
        problems.append(f"--out {args.out}: exists and is not a folder")
    return problems


def load_checked(args):
    """The options, model and its path of a ``predict``/``cohort`` command line, checked.

    Returns ``(options, model, model_path)``, or None after printing what is wrong.
    """
    from ..inference.job import PredictOptions
    from ..model import default_model_path, open_model
    from ..vocabulary import GeneIndex

    try:
        options = PredictOptions.from_args(args, roi=parse_roi(args.roi))
        model_path = args.model or default_model_path()
        # Known by its card until a slide needs the network: a cached rerun never loads it.
        model = open_model(model_path, device=args.device)
    except (StPredictError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None
    except RuntimeError as exc:  # torch.device() on a name it does not know
        print(f"error: --device {args.device!r}: {exc}", file=sys.stderr)
        return None
    problems = check_predict_args(args, options, model)
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if problems:
        return None
    missing_markers = GeneIndex(model.genes).split(args.markers or [])[1]
    if missing_markers:
        print(f"warning: markers not predicted by the model, left out: {', '.join(missing_markers)}", file=sys.stderr)
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"error: --out {args.out}: cannot create the folder ({exc.strerror or exc})", file=sys.stderr)
        return None
    return options, model, model_path


def slide_error(path: Path, exc: Exception) -> str:
    """One line naming the slide by the path the user gave, once."""
    message = str(exc)
    if str(path) in message:
        return f"error: {message}"
    name_prefix = f"{Path(path).name}: "  # slide errors start with the file name; show the full path instead
    if message.startswith(name_prefix):
        message = message[len(name_prefix) :]
    return f"error: {path}: {message}"


def drain_with_bar(gen, describe):
    """Run a progress generator with a tqdm bar; return its return value."""
    from tqdm import tqdm

    from .._progress import drain

    bar = tqdm(total=None, unit="step", dynamic_ncols=True)

    def show(progress: dict) -> None:
        text = describe(progress)
        if text:
            bar.set_description_str(text)
        if progress.get("stage") == "train":
            bar.update(1)

    try:
        return drain(gen, show)
    finally:
        bar.close()
