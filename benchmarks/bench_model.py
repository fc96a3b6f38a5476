"""Benchmark: inference speed of a model on this machine's CPU (or a GPU), and its size.

Measures patches/s of the whole per-patch computation (uint8 patches -> normalised
tensor -> image embedding -> retrieval over the bank), batch 64, after warm-up; medians
of ``--repeats`` timed batches. Reference in the same run: a ResNet-18 at 224 px
(the image encoder size of the paper's setting) doing the same work.

The model's spatial context (each spot mixed with its 8 neighbours on the predicted
grid) reads no extra patches; its cost is measured on a 200 x 200 grid with the model's
genes and folded into the per-patch rate.

Gates (issues 3, 14): at least 40 patches/s on a 2-core CPU; checkpoint at most 30 MB.

Usage: python benchmarks/bench_model.py [--model PATH] [--device cpu] [--repeats 10]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np


def patches_per_second(model, px: int, batch: int, repeats: int) -> float:
    rng = np.random.default_rng(0)
    patches = rng.integers(0, 256, (batch, px, px, 3), dtype=np.uint8)
    model.predict(patches)  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model.predict(patches)
        if model.device.type == "cuda":
            import torch

            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return batch / statistics.median(times)


def context_per_second(model, repeats: int) -> float:
    """Spots/s of the grid context (`smooth_on_grid`) on a 200 x 200 grid, 8 % holes."""
    from napari_stpredict.inference.context import neighbour_weights, smooth_on_grid

    rng = np.random.default_rng(0)
    keep = rng.random((200, 200)) > 0.08
    rows, cols = np.nonzero(keep)
    values = rng.random((len(rows), len(model.genes)), dtype=np.float32)
    weights = neighbour_weights(model.retrieval.context_sigma_um or 56.0, model.io.patch_um)
    times = []
    for _ in range(max(3, repeats // 3)):
        t0 = time.perf_counter()
        smooth_on_grid(values, rows, cols, keep.shape, (1, 1), weights)
        times.append(time.perf_counter() - t0)
    return len(rows) / statistics.median(times)


def reference_model(model, device):
    """A ResNet-18 at 224 px with the same genes and bank, for the ratio."""
    import copy

    from napari_stpredict.model import ReferenceBank, STModel, create_model

    cfg = copy.deepcopy(model.config)
    cfg.backbone, cfg.img_size = "resnet18", 224
    io = copy.deepcopy(model.io)
    io.input_px = 224
    return STModel(
        create_model(cfg), io, ReferenceBank(model.bank.embeddings.cpu(), model.bank.expression.cpu()), device=device
    )


def main() -> None:
    import torch

    from napari_stpredict.model import default_model_path, load_model

    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, default=None, help="checkpoint (default: the shipped model)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    path = args.model or default_model_path()
    model = load_model(path, device=args.device)
    ours = patches_per_second(model, model.io.input_px, args.batch, args.repeats)
    context = context_per_second(model, args.repeats)
    with_context = 1.0 / (1.0 / ours + 1.0 / context) if model.retrieval.context_sigma_um > 0 else ours
    ref = patches_per_second(reference_model(model, args.device), 224, args.batch, args.repeats)
    size_mb = path.stat().st_size / 2**20
    print(
        f"model {path.name}: {model.config.backbone} at {model.io.input_px} px, {len(model.genes)} genes, "
        f"bank {len(model.bank)} spots, on {model.device} ({torch.get_num_threads()} threads)"
    )
    print(
        f"  inference: {ours:.0f} patches/s (median of {args.repeats} batches of {args.batch}); "
        f"reference ResNet-18 at 224 px: {ref:.0f} patches/s; ratio {ours / ref:.2f}"
    )
    print(
        f"  retrieval: top-k {model.retrieval.top_k}, context σ {model.retrieval.context_sigma_um:g} µm; "
        f"context alone {context:,.0f} spots/s; per patch with it: {with_context:.0f} patches/s"
    )
    print(f"  checkpoint: {size_mb:.1f} MB")
    speed_gate = "met" if with_context >= 40 else "MISSED"
    size_gate = "met" if size_mb <= 30 else "MISSED"
    print(f"  gates: >= 40 patches/s {speed_gate}; <= 30 MB {size_gate}")


if __name__ == "__main__":
    main()
