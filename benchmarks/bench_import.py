"""Benchmark: time to ``import napari_stpredict`` in a fresh process.

Reference in the same run: ``import numpy`` (every scientific Python session pays it).
Also checks that the import pulls in neither torch nor Qt. Medians of ``--repeats``.

Usage: python benchmarks/bench_import.py [--repeats 15]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

_CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import {module}
elapsed = time.perf_counter() - t0
heavy = [m for m in ("torch", "timm", "qtpy", "PyQt6", "napari") if m in sys.modules]
print(json.dumps({{"seconds": elapsed, "heavy": heavy}}))
"""


def time_import(module: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", _CHILD.format(module=module)], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    runs = {m: [time_import(m) for _ in range(args.repeats)] for m in ("numpy", "napari_stpredict")}
    med = {m: statistics.median(r["seconds"] for r in rs) for m, rs in runs.items()}
    heavy = sorted({h for r in runs["napari_stpredict"] for h in r["heavy"]})
    print(f"import time, median of {args.repeats} fresh processes")
    print(f"  numpy (reference): {med['numpy'] * 1000:7.1f} ms")
    print(
        f"  napari_stpredict:  {med['napari_stpredict'] * 1000:7.1f} ms  "
        f"(ratio {med['napari_stpredict'] / med['numpy']:.2f})"
    )
    print(f"  heavy modules imported: {heavy or 'none'}")


if __name__ == "__main__":
    main()
