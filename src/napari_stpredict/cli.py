"""Command-line interface: ``stpredict <command>``.

Commands
--------
predict
    Predict expression over slides: .h5ad table, GeoTIFF per gene, tumour mask
    (GeoTIFF + GeoJSON), PNG overview and the resolved config.
info
    Open slides (or the bundled sample), write a JSON summary and a thumbnail PNG with
    the detected tissue outlined.
convert
    her2st sections or a Space Ranger folder -> one ``.h5ad`` per section.
train
    Train a CMRCNet from a YAML config; resumable.
evaluate
    The evaluation protocol (patient-level folds and leave-one-section-out) with baselines.
"""

from __future__ import annotations

import argparse
import json
import math
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


def _slide_paths(args) -> list[Path]:
    """The slides named on the command line, plus the bundled sample with --sample."""
    slides = list(args.slides)
    if args.sample:
        from ._resources import SAMPLE_SLIDE, sample_data_dir

        slides.append(sample_data_dir() / SAMPLE_SLIDE)
    return slides


def _cmd_info(args) -> int:
    from .io.atomic import atomic_path
    from .io.slide import open_slide
    from .tissue import slide_tissue_mask

    slides = _slide_paths(args)
    if not slides:
        print("stpredict info: give slide files or --sample", file=sys.stderr)
        return 2
    if args.out.exists() and not args.out.is_dir():
        print(f"error: --out {args.out}: exists and is not a folder", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    names = _output_names(slides)
    failures = 0
    for path in slides:
        try:
            with open_slide(path, mpp=args.mpp) as slide:
                summary = slide.summary()
                tissue = slide_tissue_mask(slide, max_size=args.thumbnail_size, require_tissue=False)
                summary["tissue_fraction"] = round(tissue.fraction, 4)
                thumb = _outline(slide.thumbnail(args.thumbnail_size), tissue.mask)
        except (StPredictError, ValueError, OSError) as exc:
            print(_slide_error(path, exc), file=sys.stderr)
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


def _outline(thumb, mask):
    """Draw the tissue mask boundary in green on a copy of the thumbnail."""
    import numpy as np
    from skimage.segmentation import find_boundaries

    out = thumb.copy()
    edge = find_boundaries(mask, mode="outer")
    out[edge] = (0, 200, 0)
    return np.ascontiguousarray(out)


def _add_predict(sub) -> None:
    p = sub.add_parser("predict", help="predict gene expression over slides and export maps")
    p.add_argument("slides", nargs="*", type=Path, help="slide files")
    p.add_argument("--sample", action="store_true", help="also predict the bundled sample slide (her2st C2)")
    p.add_argument("--out", type=Path, required=True, help="output folder (one sub-folder per slide)")
    _add_prediction_options(p)
    p.add_argument("--no-cache", action="store_true", help="always run the model")
    p.add_argument(
        "--pseudonymize",
        action="store_true",
        help="leave the slide's file name (e.g. a TCGA barcode) out of every output: folders, tables, "
        "GeoTIFF tags and config.yaml use an id made from the file's content (slide-<12 hex>); "
        "the terminal shows which file got which id, nothing else records it",
    )
    p.set_defaults(func=_cmd_predict)


def _add_prediction_options(p) -> None:
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
        choices=["qupath"],
        default=None,
        help="extra files per slide: qupath = qupath_detections.geojson, one QuPath detection per spot "
        "with the genes, confidence and tumour score as measurements (Measure > Show measurement maps)",
    )
    p.add_argument(
        "--export-genes",
        choices=["chosen", "all"],
        default="chosen",
        help="genes in the --export files: those of --genes (default) or all the model's",
    )


def _add_cohort(sub) -> None:
    p = sub.add_parser(
        "cohort",
        help="predict a cohort of slides on a Dask cluster (local or running), resumable, with a cohort table",
        description="Predict many slides, one Dask task per slide: on a LocalCluster started for the "
        "command, or on a running cluster (--scheduler). Each slide gets the folder 'predict' writes, "
        "whole or not at all, with a completion record; a rerun skips slides complete with the same "
        "settings. Writes cohort.csv, cohort.h5ad, cohort_overview.png, cohort_<gene>.png, cohort.log. "
        "Research use only; not for diagnosis.",
    )
    p.add_argument(
        "slides",
        nargs="+",
        help="slide files, quoted globs ('slides/*.svs'), folders, or CSV manifests (columns: slide, optional mpp, id)",
    )
    p.add_argument("--out", type=Path, required=True, help="output folder")
    _add_prediction_options(p)
    p.add_argument(
        "--workers", type=int, default=None, help="LocalCluster worker processes (default: one per GPU, else cores/4)"
    )
    p.add_argument(
        "--threads-per-worker", type=int, default=None, help="torch threads per worker (default: cores / workers)"
    )
    p.add_argument(
        "--memory-limit", default="auto", help="per LocalCluster worker, e.g. 8GB (default: Dask's share of RAM)"
    )
    p.add_argument(
        "--scheduler",
        default=None,
        help="address (tcp://host:8786) or scheduler file (.json) of a running Dask cluster, e.g. one started "
        "with dask-jobqueue on Slurm/PBS or dask-kubernetes; without it a LocalCluster is started",
    )
    p.add_argument(
        "--allowed-failures",
        type=int,
        default=2,
        help="workers a slide may take down (crash, out of memory) before it is marked failed (default 2)",
    )
    p.add_argument(
        "--pseudonymize",
        action="store_true",
        help="ids from each file's content (slide-<12 hex>) instead of file names; the table has no slide column",
    )
    # The completion records do the cache's job for a cohort; a second copy of every
    # prediction in the user's cache folder would only fill the disk.
    p.set_defaults(func=_cmd_cohort, no_cache=True)


def _parse_roi(text: str | None):
    """``--roi``: a box ``x0,y0,x1,y1`` in level-0 pixels, or a GeoJSON file of polygons.

    Raises
    ------
    ValueError
        Naming ``--roi`` and the file, for a missing, empty, unreadable or polygon-less
        file and for a malformed box.
    """
    if text is None:
        return None
    path = Path(text)
    if path.suffix.lower() in (".json", ".geojson"):
        return _roi_polygons(path)
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError as exc:
        raise ValueError(f"--roi must be x0,y0,x1,y1 in level-0 pixels or a .geojson file, got {text!r}") from exc
    if (
        len(values) != 4
        or not all(math.isfinite(v) for v in values)
        or values[2] <= values[0]
        or values[3] <= values[1]
    ):
        raise ValueError(f"--roi must be x0,y0,x1,y1 with x1 > x0 and y1 > y0, got {text!r}")
    x0, y0, x1, y1 = values
    return [[[x0, y0], [x1, y0], [x1, y1], [x0, y1]]]


def _roi_polygons(path: Path) -> list:
    """Outer rings of every Polygon/MultiPolygon in a GeoJSON file (QuPath's export too)."""
    if not path.is_file():
        raise ValueError(f"--roi {path}: file not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"--roi {path}: not a readable GeoJSON file ({exc})") from exc
    if isinstance(data, dict):
        features = data.get("features", [data]) if data.get("type") == "FeatureCollection" else [data]
    elif isinstance(data, list):  # QuPath writes a bare list of features
        features = data
    else:
        features = []
    polygons = []
    for feature in features:
        geom = feature.get("geometry", feature) if isinstance(feature, dict) else None
        if not isinstance(geom, dict):
            continue  # "geometry": null is valid GeoJSON for a feature without a shape
        coords = geom.get("coordinates")
        try:
            if geom.get("type") == "Polygon":
                rings = [coords[0]]
            elif geom.get("type") == "MultiPolygon":
                rings = [poly[0] for poly in coords]
            else:
                continue
            for ring in rings:
                ring = [[float(x), float(y)] for x, y, *_ in ring]
                bad = next((pt for pt in ring if not all(math.isfinite(v) for v in pt)), None)
                if bad is not None:
                    raise ValueError(f"--roi {path}: a {geom.get('type')} has a coordinate that is not a number: {bad}")
                if len(ring) >= 3:
                    polygons.append(ring)
        except (TypeError, ValueError, IndexError) as exc:
            raise ValueError(f"--roi {path}: a {geom.get('type')} has malformed coordinates ({exc})") from exc
    if not polygons:
        raise ValueError(f"--roi {path}: no Polygon or MultiPolygon with at least 3 points in the file")
    return polygons


def _output_names(paths: list[Path]) -> dict[Path, str]:
    """One output folder name per slide path, unique within the command (`folder_names`)."""
    from .inference.job import folder_names

    unique = list(dict.fromkeys(paths))  # a file named twice is one folder
    return dict(zip(unique, folder_names(unique), strict=True))


def _refused_folders(folders: dict[Path, Path]) -> list[str]:
    """Why output folders cannot be written (a folder holding an input slide, or one the
    product did not write), for every slide of the command, before any work."""
    from .io.output_folder import ForeignFolderError, check_output_folder

    inputs = list(folders)
    problems = []
    for folder in dict.fromkeys(folders.values()):
        try:
            check_output_folder(folder, inputs)
        except ForeignFolderError as exc:
            problems.append(str(exc))
    return problems


def _check_predict_args(args, options, model) -> list[str]:
    """Problems with the options, found before any slide is read (empty when all is well)."""
    problems = options.problems(model)
    if args.out.exists() and not args.out.is_dir():
        problems.append(f"--out {args.out}: exists and is not a folder")
    return problems


def _load_checked(args):
    """The options, model and its path of a ``predict``/``cohort`` command line, checked.

    Returns ``(options, model, model_path)``, or None after printing what is wrong.
    """
    from .inference.job import PredictOptions
    from .model import default_model_path, open_model
    from .vocabulary import GeneIndex

    try:
        options = PredictOptions.from_args(args, roi=_parse_roi(args.roi))
        model_path = args.model or default_model_path()
        # Known by its card until a slide needs the network: a cached rerun never loads it.
        model = open_model(model_path, device=args.device)
    except (StPredictError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None
    except RuntimeError as exc:  # torch.device() on a name it does not know
        print(f"error: --device {args.device!r}: {exc}", file=sys.stderr)
        return None
    problems = _check_predict_args(args, options, model)
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


def _cmd_predict(args) -> int:
    from tqdm import tqdm

    from .inference.job import predict_to_folder, pseudonym

    slides = _slide_paths(args)
    if not slides:
        print("stpredict predict: give slide files or --sample", file=sys.stderr)
        return 2
    names = _output_names(slides)
    shown = {path: pseudonym(path) if args.pseudonymize and path.is_file() else None for path in slides}
    folders = {path: args.out / (shown[path] or names[path]) for path in slides}
    refused = _refused_folders(folders)
    for problem in refused:
        print(f"error: {problem}", file=sys.stderr)
    if refused:
        return 2
    checked = _load_checked(args)
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
            print(_slide_error(path, exc), file=sys.stderr)
            failures += 1
    return 1 if failures else 0


def _cmd_cohort(args) -> int:
    from tqdm import tqdm

    from .cohort import run_cohort
    from .inference.job import PredictOptions

    try:
        options = PredictOptions.from_args(args, roi=_parse_roi(args.roi))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    bar: list = []

    def show(event: dict) -> None:
        if event["event"] == "planned":
            print(
                f"{event['total']} slides: {event['reused']} complete with these settings (reused), "
                f"{event['failed']} missing, {event['to_run']} to predict",
                file=sys.stderr,
            )
            bar.append(tqdm(total=event["total"], initial=event["reused"] + event["failed"], unit="slide"))
        elif event["event"] == "started":
            link = event.get("dashboard")
            print(
                f"Dask dashboard: {link}" if link else "Dask dashboard: pip install bokeh to get one", file=sys.stderr
            )
        elif event["event"] == "slide" and bar:
            bar[0].update(1)
            bar[0].set_postfix(done=event["done"], failed=event["failed"], running=event["running"], refresh=True)

    try:
        table = run_cohort(
            args.slides,
            out=args.out,
            model=args.model,
            scheduler=args.scheduler,
            workers=args.workers,
            threads_per_worker=args.threads_per_worker,
            memory_limit=args.memory_limit,
            allowed_failures=args.allowed_failures,
            device=args.device,
            pseudonymize=args.pseudonymize,
            options=options,
            progress=show,
        )
    except (StPredictError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # The cluster was closed on the way out; finished slides keep their folders and records.
        print(
            f"\ninterrupted: the slides finished so far are kept in {args.out}; run the same command "
            "again to resume (they are not recomputed)",
            file=sys.stderr,
        )
        return 130
    finally:
        for b in bar:
            b.close()
    counts = table["status"].value_counts().to_dict()
    print(
        f"{len(table)} slides: {counts.get('done', 0)} predicted, {counts.get('reused', 0)} reused, "
        f"{counts.get('failed', 0)} failed -> {args.out / 'cohort.csv'} (details: {args.out / 'cohort.log'})"
    )
    for row in table[table["status"] == "failed"].itertuples(index=False):
        print(f"error: {row.id}: {row.error}", file=sys.stderr)
    return 1 if counts.get("failed", 0) else 0


def _report(slide, prediction, mask, out: Path, shown_as: str | None = None) -> None:
    from .inference.trust import trust_lines

    verdict = prediction.trust.domain.verdict
    source = "cached" if prediction.meta.cache == "hit" else "predicted"
    name = f"{slide.name} (as {shown_as})" if shown_as else slide.name
    print(
        f"{name}: {len(prediction)} spots ({source}), {verdict}, tumour {mask.fraction:.0%} of "
        f"tissue (threshold {mask.describe()}) -> {out}"
    )
    for line in trust_lines(prediction.meta) + ([mask.note] if mask.note else []):
        print(f"  warning: {slide.name}: {line}", file=sys.stderr)


def _slide_error(path: Path, exc: Exception) -> str:
    """One line naming the slide by the path the user gave, once."""
    message = str(exc)
    if str(path) in message:
        return f"error: {message}"
    name_prefix = f"{Path(path).name}: "  # slide errors start with the file name; show the full path instead
    if message.startswith(name_prefix):
        message = message[len(name_prefix) :]
    return f"error: {path}: {message}"


def _add_convert(sub) -> None:
    p = sub.add_parser("convert", help="convert ST data (her2st, Space Ranger) to .h5ad")
    p.add_argument("kind", choices=["her2st", "visium"], help="input layout")
    p.add_argument("source", type=Path, help="her2st folder, or Space Ranger output folder")
    p.add_argument("--sections", nargs="*", default=None, help="her2st sections (default: all)")
    p.add_argument("--image", type=Path, default=None, help="Visium: the full-resolution H&E image")
    p.add_argument(
        "--genes",
        nargs="*",
        default=None,
        help="only these genes (symbols, any case, or Ensembl IDs); missing ones are reported",
    )
    p.add_argument(
        "--id", default=None, help="Visium: the section's name (default: the sample folder, <sample> for <sample>/outs)"
    )
    p.add_argument("--patient", default=None, help="Visium: the patient (training splits by it; default: the id)")
    p.add_argument("--overwrite", action="store_true", help="replace .h5ad files that exist already")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.set_defaults(func=_cmd_convert)


def _cmd_convert(args) -> int:
    from .io.st_data import her2st_sections, match_genes, read_her2st_section, read_visium, visium_sample_name
    from .vocabulary import safe_filename

    if args.kind == "her2st":
        if args.id or args.patient:
            print("error: --id and --patient are for visium (her2st names its sections)", file=sys.stderr)
            return 2
        sections = args.sections or her2st_sections(args.source)
        names = list(sections)
        loaders = [lambda s=s: read_her2st_section(args.source, s, with_image=False) for s in sections]
    else:
        name = (args.id or visium_sample_name(args.source)).strip()
        if not safe_filename(name).strip("._"):
            print(f"error: {args.source}: no usable section name ({name!r}); give one with --id", file=sys.stderr)
            return 2
        names = [name]
        loaders = [lambda: read_visium(args.source, library_id=name, patient=args.patient, fullres_image=args.image)]
    targets = [args.out / f"{safe_filename(n)}.h5ad" for n in names]
    existing = [str(t) for t in targets if t.exists()]
    if existing and not args.overwrite:  # checked before reading anything
        print(
            f"error: {', '.join(existing[:5])}: exists already; pass --overwrite to replace it, or another --out/--id",
            file=sys.stderr,
        )
        return 2
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"error: --out {args.out}: cannot create the folder ({exc.strerror or exc})", file=sys.stderr)
        return 2
    status = 0
    for name, load, path in zip(names, loaders, targets, strict=True):
        try:
            adata = load()
        except StPredictError as exc:
            print(f"error: {exc}", file=sys.stderr)
            status = 1
            continue
        if args.genes:
            idx, found, missing = match_genes(adata.var, args.genes)
            if missing:
                print(
                    f"{name}: {len(missing)} requested genes are not in the data: {', '.join(missing)}", file=sys.stderr
                )
            adata = adata[:, idx].copy()
        from .io.atomic import atomic_path

        with atomic_path(path) as tmp:
            adata.write_h5ad(tmp, compression="gzip")
        print(f"{name}: {adata.n_obs} spots x {adata.n_vars} genes -> {path}")
    return status


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a CMRCNet model (resumable)")
    p.add_argument("--config", type=Path, required=True, help="training YAML (see configs/)")
    p.add_argument("--out", type=Path, default=None, help="run folder (default: out_dir of the config)")
    p.add_argument("--epochs", type=int, default=None, help="override the number of epochs")
    p.add_argument(
        "--steps", type=int, default=None, help="override the training length in optimizer steps (replaces epochs)"
    )
    p.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:1, mps")
    p.add_argument(
        "--rebuild-bank",
        type=Path,
        default=None,
        metavar="CHECKPOINT",
        help="do not train: write CHECKPOINT with its bank rebuilt from the config's training and "
        "bank_sections (to --out, default: CHECKPOINT with suffix .bank.pt)",
    )
    p.add_argument(
        "--calibrate",
        type=Path,
        default=None,
        metavar="CHECKPOINT",
        help="do not train: write CHECKPOINT with its trust calibration (out-of-domain score, tumour "
        "threshold) computed from its training sections, bank unchanged (to --out, default: "
        "CHECKPOINT with suffix .calibrated.pt); for checkpoints made before calibration existed",
    )
    p.set_defaults(func=_cmd_train)


def _drain_with_bar(gen, describe):
    """Run a progress generator with a tqdm bar; return its return value."""
    from tqdm import tqdm

    from ._progress import drain

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


def _train_overrides(args) -> dict:
    """Config values given on the command line; ``--epochs`` alone clears a step budget."""
    given = {"epochs": args.epochs, "steps": args.steps, "device": args.device}
    overrides = {k: v for k, v in given.items() if v is not None}
    if args.epochs is not None and args.steps is None:
        overrides["steps"] = None  # otherwise a config's steps would silently win over --epochs
    return overrides


def _cmd_train(args) -> int:
    from .training.train import iter_train, load_train_config

    overrides = _train_overrides(args)
    try:
        cfg = load_train_config(args.config, overrides)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.calibrate is not None:
        from .training.calibration import calibrate_checkpoint

        out = args.out or args.calibrate.with_suffix(".calibrated.pt")
        try:
            path = calibrate_checkpoint(args.calibrate, out, her2st=cfg.her2st, cache_dir=cfg.cache_dir)
        except (StPredictError, ValueError, FileNotFoundError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"calibrated checkpoint: {path}")
        return 0
    if args.rebuild_bank is not None:
        from .training.bank import rebuild_bank

        out = args.out or args.rebuild_bank.with_suffix(".bank.pt")
        path = rebuild_bank(
            args.rebuild_bank,
            out,
            bank_sections=cfg.bank_sections,
            her2st=cfg.her2st,
            max_bank=cfg.max_bank,
            seed=cfg.seed,
        )
        print(f"checkpoint with rebuilt bank: {path}")
        return 0
    run_dir = args.out or Path(cfg.out_dir)

    def describe(p):
        if p["stage"] == "train":
            return f"step {p['global_step']}/{p['total_steps']} loss {p['loss']:.3f}"
        return p.get("message") or p["stage"]

    try:
        path = _drain_with_bar(iter_train(cfg, run_dir), describe)
    except (StPredictError, ValueError) as exc:  # data the checks could not see (labels, genes)
        print(f"error: {args.config}: {exc}", file=sys.stderr)
        return 2
    print(f"checkpoint: {path}")
    return 0


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="evaluation protocol with baselines; writes JSON and a Markdown table")
    p.add_argument("--config", type=Path, default=Path("evaluation/config.yaml"))
    p.add_argument("--protocol", nargs="*", default=None, help="patient, loso_C (default: both)")
    p.add_argument("--fold", nargs="*", default=None, help="e.g. test_B test_C3 (default: all)")
    p.add_argument(
        "--variant", nargs="*", default=None, help="cmrcnet contrastive ridge_features untrained (default: all)"
    )
    p.add_argument(
        "--quick", action="store_true", help="fewer training steps (quick_steps): the table within an hour on a CPU"
    )
    p.add_argument(
        "--seed",
        type=int,
        default=None,
        help="train every fold with this seed instead of the config's; results go to "
        "<out_dir>/seeds/seed<N>, runs to <run_dir>/seed<N> (claims need 3 seeds)",
    )
    p.add_argument("--device", default=None)
    p.set_defaults(func=_cmd_evaluate)


def _cmd_evaluate(args) -> int:
    import json as _json

    from .training.evaluate import EvalConfig, agreement_table, iter_evaluate, markdown_table, summarise

    try:
        cfg = EvalConfig.from_yaml(args.config)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        message = str(exc)  # names the file already, unless Python's own error
        print(f"error: {message if str(args.config) in message else f'{args.config}: {message}'}", file=sys.stderr)
        return 2
    if args.device:
        cfg.train.device = args.device
    if args.seed is not None and args.seed != cfg.train.seed:
        cfg.train.seed = args.seed
        cfg.out_dir = str(Path(cfg.out_dir) / "seeds" / f"seed{args.seed}")
        cfg.run_dir = str(Path(cfg.run_dir) / f"seed{args.seed}")

    def describe(p):
        where = f"{p.get('protocol')}/{p.get('fold')}/{p.get('variant', '')}"
        if p.get("stage") == "train":
            return f"{where} step {p['global_step']}/{p['total_steps']} loss {p['loss']:.3f}"
        return f"{where} {p.get('stage')}"

    try:
        _drain_with_bar(
            iter_evaluate(cfg, protocols=args.protocol, folds=args.fold, variants=args.variant, quick=args.quick),
            describe,
        )
    except (ValueError, FileNotFoundError) as exc:  # e.g. results of another recipe in the way
        print(f"error: {exc}", file=sys.stderr)
        return 2
    results = Path(cfg.out_dir) / ("quick" if args.quick else "full")
    summary = summarise(results)
    (results / "summary.json").write_text(_json.dumps(summary, indent=1), encoding="utf-8")
    table = markdown_table(summary)
    (results / "table.md").write_text(table, encoding="utf-8")
    print(table)
    full_summary = Path(cfg.out_dir) / "full" / "summary.json"
    if args.quick and full_summary.exists():  # how well the quick setting stands in for the full one
        agreement = agreement_table(summary, _json.loads(full_summary.read_text(encoding="utf-8")))
        (results / "agreement.md").write_text(agreement, encoding="utf-8")
        print(agreement)
    print(f"results: {results}")
    return 0


def _add_genes(sub) -> None:
    p = sub.add_parser("genes", help="list the genes a model predicts, with their held-out accuracy")
    p.add_argument("--model", type=Path, default=None, help="checkpoint (default: the bundled model)")
    p.add_argument(
        "--sort",
        choices=["name", "accuracy"],
        default="name",
        help="order: by name (default) or by held-out Pearson r, best first",
    )
    p.set_defaults(func=_cmd_genes)


def _cmd_genes(args) -> int:
    from .model import open_model
    from .model.accuracy import gene_accuracy

    try:
        model = open_model(args.model, device="cpu")  # the card: no torch for a gene list
    except StPredictError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    accuracy, source = gene_accuracy(model)
    genes = sorted(model.genes, key=str.upper)
    if args.sort == "accuracy":
        genes.sort(key=lambda g: -accuracy[g] if accuracy.get(g) is not None else math.inf)
    panel = set(model.provenance.get("markers", {}).get("panel", []))
    print(f"# {len(genes)} genes of {model.source}; r: {source}")
    print("gene\tr\tmarker_panel")
    for gene in genes:
        r = accuracy.get(gene)
        print(f"{gene}\t{'' if r is None else f'{r:.3f}'}\t{'yes' if gene in panel else ''}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``stpredict`` argument parser."""
    from ._version import __version__

    parser = argparse.ArgumentParser(
        prog="stpredict",
        description="Predict spatial gene expression from H&E slides. Research use only; not for diagnosis.",
    )
    parser.add_argument("--version", action="version", version=f"napari-stpredict {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_predict(sub)
    _add_cohort(sub)
    _add_info(sub)
    _add_genes(sub)
    _add_convert(sub)
    _add_train(sub)
    _add_evaluate(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    import logging

    # tifffile logs structural oddities as warnings ("invalid offset to first page") on
    # the way to an error of ours that says it better; keep the terminal to ours.
    logging.getLogger("tifffile").setLevel(logging.ERROR)
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except BrokenPipeError:
        # The reader went away (``stpredict genes | head``): no traceback; Python's own
        # advice is to point stdout at devnull so the exit-time flush cannot fail again.
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141 if os.name == "posix" else 1


if __name__ == "__main__":
    sys.exit(main())
