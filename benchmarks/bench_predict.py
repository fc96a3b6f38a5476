"""Benchmark: whole-slide prediction throughput and memory, against its two stages.

For the sample slide and a generated 50,000 x 50,000 px slide (made by
bench_open_view.py's generator), each in a fresh process, on the same spot grid:

- read:  patches/s reading patches alone (same threads as the engine);
- model: patches/s of the model alone on patches already in memory, run as the engine
  runs it (on the CPU several batches side by side with fewer torch threads each:
  `model.precision.model_workers_for`);
- end-to-end: patches/s of ``predict_slide`` (tissue detection, reading overlapped with
  the model, retrieval, output).

The ratio end-to-end / slowest stage shows how well reading and compute overlap (target
>= 0.9). On a CPU the two stages share the same cores, so even a perfect overlap cannot
beat 1 / (1/read + 1/model) patches/s (each stage's core-seconds added up): the
"bound" column, the ratio it allows, beside the measured one.

Peak memory is the highest resident memory during ``predict_slide`` above the process's
memory before it (sampled every 20 ms). Medians of ``--repeats`` runs.

Usage: python benchmarks/bench_predict.py [--device cpu] [--repeats 3] [--model PATH]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

_CHILD = r"""
import json, sys, threading, time
import numpy as np, psutil, torch
from napari_stpredict.io.slide import open_slide
from napari_stpredict.model import load_model
from napari_stpredict.inference import run_prediction
from napari_stpredict.inference.predict import _tissue_thumbnail_size
from napari_stpredict.tiling import spot_grid
from napari_stpredict.tissue import slide_tissue_mask
from napari_stpredict.io.patches import read_patches
from concurrent.futures import ThreadPoolExecutor
from napari_stpredict.model.precision import model_workers_for, read_threads_for

slide_path, model_path, device, batch = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
model = load_model(None if model_path == "default" else model_path, device=device)
proc = psutil.Process()
with open_slide(slide_path) as slide:
    tissue = slide_tissue_mask(slide, max_size=_tissue_thumbnail_size(slide, model.io.patch_um))
    grid = spot_grid(tissue.mask, tissue.l0_per_th, slide.mpp, patch_um=model.io.patch_um)
    n = len(grid)
    starts = range(0, n, batch)
    # read alone, with the engine's threads for this device
    threads = read_threads_for(model.device)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        chunks = list(pool.map(lambda s: read_patches(slide, grid.l0_centres[s:s + batch], model.io.patch_um,
                                                      model.io.input_px), starts))
    read_s = time.perf_counter() - t0
    # model alone on the first batches (all of them for small slides), as the engine runs it
    sample = chunks[: max(1, min(len(chunks), 40))]
    workers, each = model_workers_for(model.device)
    threads_before = torch.get_num_threads()
    if workers > 1:
        torch.set_num_threads(each)
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(model.predict, sample[:workers]))  # warm-up, each thread once
        t0 = time.perf_counter()
        list(pool.map(model.predict, sample))
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        model_s = (time.perf_counter() - t0) * len(chunks) / len(sample)
    torch.set_num_threads(threads_before)
    del chunks, sample
    # end to end, with peak memory
    base = proc.memory_info().rss
    peak = [base]
    stop = threading.Event()
    def watch():
        while not stop.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.02)
    th = threading.Thread(target=watch); th.start()
    if model.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    pred = run_prediction(slide, model, batch_size=batch)
    e2e_s = time.perf_counter() - t0
    gpu_mb = torch.cuda.max_memory_allocated() / 2**20 if model.device.type == "cuda" else 0.0
    stop.set(); th.join()
    dims = slide.dimensions
print(json.dumps({"spots": n, "read": n / read_s, "model": n / model_s, "end_to_end": n / e2e_s,
                  "model_workers": workers,
                  "peak_mb": (peak[0] - base) / 2**20, "gpu_peak_mb": gpu_mb, "threads": threads,
                  "precision": model.precision.name, "output_mb": pred.adata.X.nbytes / 2**20,
                  "megapixels": dims[0] * dims[1] / 1e6}))
"""


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_open_view import LARGE_SIZE, make_large_tiff

    from napari_stpredict._resources import SAMPLE_SLIDE, sample_data_dir

    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default="default")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "stpredict-bench")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    slides = {
        "sample 7,400 x 6,300": sample_data_dir() / SAMPLE_SLIDE,
        f"generated {LARGE_SIZE:,} x {LARGE_SIZE:,}": make_large_tiff(args.workdir / f"large_{LARGE_SIZE}_v2.tiff"),
    }
    results = {}
    for label, path in slides.items():
        runs = []
        for _ in range(args.repeats):
            out = subprocess.run(
                [sys.executable, "-c", _CHILD, str(path), args.model, args.device, str(args.batch)],
                capture_output=True,
                text=True,
            )
            if out.returncode != 0:
                raise SystemExit(f"benchmark failed on {label}:\n{out.stderr[-3000:]}")
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        med = {
            k: statistics.median(r[k] for r in runs) if isinstance(v, (int, float)) else v for k, v in runs[0].items()
        }
        results[label] = {"median": med, "runs": runs}
    print(f"\nwhole-slide prediction on {args.device}, batch {args.batch}, median of {args.repeats} fresh processes")
    print(
        f"{'slide':28s} {'Mpx':>7s} {'spots':>7s} {'read/s':>8s} {'model/s':>8s} {'e2e/s':>7s} "
        f"{'e2e/slowest':>11s} {'bound':>6s} {'peak MB':>8s} {'output MB':>9s}"
    )
    for label, r in results.items():
        m = r["median"]
        slowest = min(m["read"], m["model"])
        shared = 1.0 / (1.0 / m["read"] + 1.0 / m["model"]) / slowest
        print(
            f"{label:28s} {m['megapixels']:7.0f} {m['spots']:7.0f} {m['read']:8.0f} {m['model']:8.0f} "
            f"{m['end_to_end']:7.0f} {m['end_to_end'] / slowest:11.2f} "
            f"{shared if args.device == 'cpu' else float('nan'):6.2f} {m['peak_mb']:8.0f} {m['output_mb']:9.1f}"
        )
    print("e2e/slowest: end-to-end patches/s over the slower of reading alone and the model alone (target >= 0.9)")
    if args.device == "cpu":
        print("bound: the most e2e/slowest can be when reading and the model share the same CPU cores")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
