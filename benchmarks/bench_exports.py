"""Benchmark: size on disk and write time of each export, against the spot table.

For the sample slide and the generated 50,000 x 50,000 px slide (bench_open_view.py's
generator), the slide is predicted once (the bundled model, through the result cache),
then each file is written ``--repeats`` times:

- ``prediction.h5ad``: the spot table every run writes (the reference of the ratios);
- QuPath detections with two genes (``--export qupath``) and with every gene
  (``--export-genes all``);
- SpatialData ``prediction.zarr`` (``--export spatialdata``: the slide downsampled to
  4,096 px, spots, the whole table, tumour contours).

Medians of the repeats; sizes are bytes on disk of the file or folder.

Usage: python benchmarks/bench_exports.py [--repeats 3] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path


def _size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _timed(write, path: Path, repeats: int) -> dict:
    times = []
    for _ in range(repeats):
        if path.exists():
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        t0 = time.perf_counter()
        write(path)
        times.append(time.perf_counter() - t0)
    return {"seconds": statistics.median(times), "mb": _size(path) / 1e6}


def _measure(path: Path, model, args) -> dict:
    """Predict one slide (cached) and time each export of it."""
    from napari_stpredict._progress import drain
    from napari_stpredict.inference.cache import cached_predict_slide
    from napari_stpredict.inference.qupath import write_qupath_detections
    from napari_stpredict.inference.spatial_data import to_spatialdata, write_spatialdata
    from napari_stpredict.inference.tumor import add_tumour_columns, tumor_mask
    from napari_stpredict.io.slide import open_slide

    out = Path(tempfile.mkdtemp(prefix="exports-", dir=args.workdir))
    try:
        with open_slide(path) as slide:
            prediction = drain(cached_predict_slide(slide, model, use_cache=True))
            mask = tumor_mask(prediction, None)  # the model's own marker panel
            add_tumour_columns(prediction, mask)
            every = list(prediction.genes)
            row: dict = {"spots": len(prediction)}
            row["h5ad"] = _timed(prediction.save, out / "prediction.h5ad", args.repeats)
            row["qupath_2_genes"] = _timed(
                lambda p: write_qupath_detections(prediction, ["ERBB2", "GRB7"], p, threshold=mask.threshold),
                out / "qupath_2.geojson",
                args.repeats,
            )
            row["qupath_all_genes"] = _timed(
                lambda p: write_qupath_detections(prediction, every, p, threshold=mask.threshold),
                out / "qupath_all.geojson",
                args.repeats,
            )
            row["spatialdata"] = _timed(
                lambda p: write_spatialdata(to_spatialdata(prediction, slide, mask), p),
                out / "prediction.zarr",
                args.repeats,
            )
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return row


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_open_view import LARGE_SIZE, make_large_tiff

    from napari_stpredict._resources import SAMPLE_SLIDE, sample_data_dir
    from napari_stpredict.model import load_model

    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "stpredict-bench")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    slides = {
        "sample 7,400 x 6,300": sample_data_dir() / SAMPLE_SLIDE,
        f"generated {LARGE_SIZE:,} x {LARGE_SIZE:,}": make_large_tiff(args.workdir / f"large_{LARGE_SIZE}_v2.tiff"),
    }
    model = load_model(None, device="cpu")
    results = {label: _measure(path, model, args) for label, path in slides.items()}
    print(f"\nexports: median of {args.repeats} writes each; ratio = time over writing prediction.h5ad")
    print(f"{'slide':28s} {'spots':>7s} {'file':18s} {'MB':>8s} {'s':>7s} {'ratio':>6s}")
    for label, row in results.items():
        ref = row["h5ad"]["seconds"]
        for name in ("h5ad", "qupath_2_genes", "qupath_all_genes", "spatialdata"):
            r = row[name]
            print(
                f"{label:28s} {row['spots']:7d} {name:18s} {r['mb']:8.1f} {r['seconds']:7.2f} {r['seconds'] / ref:6.1f}"
            )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
