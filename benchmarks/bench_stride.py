"""How the spot stride trades accuracy and time: the choice of the default map.

Usage: python benchmarks/bench_stride.py [--model PATH] [--strides 112 56 37.33 28]

Predicts the bundled sample (held-out her2st section C2) with the bundled model at
strides from 112 µm (one patch, the default) down to 28 µm, and reports for each the
number of spots, the time to the prediction (CPU), and the Pearson r between predicted
ERBB2 (the grid cell each measured spot falls in) and the measured ERBB2 at the
sample's 100 µm spots. The maps are drawn with linear interpolation between spot centres
at every stride, so a finer stride is not needed to avoid a mosaic.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np


def main() -> None:
    import anndata as ad

    from napari_stpredict._resources import SAMPLE_SLIDE, SAMPLE_SPOTS, sample_data_dir
    from napari_stpredict.inference import run_prediction
    from napari_stpredict.io.slide import open_slide
    from napari_stpredict.io.st_data import match_genes
    from napari_stpredict.model import load_model
    from napari_stpredict.training.data import log1p_cp10k

    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, default=None, help="checkpoint (default: the bundled model)")
    parser.add_argument("--strides", type=float, nargs="+", default=[112.0, 56.0, 37.33, 28.0])
    args = parser.parse_args()
    model = load_model(args.model, device="cpu")
    print(
        f"model {args.model or 'bundled'}: top-k {model.retrieval.top_k}, "
        f"context σ {model.retrieval.context_sigma_um:g} µm"
    )
    spots = ad.read_h5ad(sample_data_dir() / SAMPLE_SPOTS)
    idx, _, _ = match_genes(spots.var, ["ERBB2"])
    measured = log1p_cp10k(spots, idx).ravel()
    xy = np.asarray(spots.obsm["spatial"], float)
    print("| stride (µm) | spots | seconds (CPU) | ERBB2 r at measured spots |")
    print("|---|---|---|---|")
    with open_slide(sample_data_dir() / SAMPLE_SLIDE) as slide:
        run_prediction(slide, model, stride_um=112.0)  # warm-up: imports, first reads
        for stride in args.strides:
            t0 = time.perf_counter()
            prediction = run_prediction(slide, model, stride_um=stride)
            seconds = time.perf_counter() - t0
            values = prediction.heatmap("ERBB2").sample(xy)
            good = np.isfinite(values)
            r = np.corrcoef(values[good], measured[good])[0, 1]
            print(f"| {stride:g} | {len(prediction)} | {seconds:.1f} | {r:.3f} |", flush=True)


if __name__ == "__main__":
    main()
