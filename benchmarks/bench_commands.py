"""Commands users wait on: model-free commands against ``import torch``, and a cached
``predict`` rerun against the first run of the same slide.

Usage: python benchmarks/bench_commands.py [--repeats 3] [--slide PATH --mpp 0.688]

Every figure is a fresh process (``stpredict ...`` as a user types it), medians of
``--repeats``, as ratios against a reference timed in the same run:

- ``stpredict genes`` and ``stpredict info --sample`` against ``python -c "import torch"``
  (the floor any torch-using command pays);
- ``stpredict predict SLIDE`` with a cache hit against the same command with an empty
  cache (the first run). Default slide: her2st B4 (``../shared/data``), else the sample.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
B4 = REPO.parent / "shared" / "data" / "her2st" / "ST-imgs" / "B" / "B4" / "BT10737_D2_HE.jpg"
STPREDICT = [sys.executable, "-m", "napari_stpredict.cli"]


def _timed(argv: list[str], env: dict | None = None) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True, env={**os.environ, **(env or {})})
    return time.perf_counter() - t0


def _median(fn, repeats: int) -> float:
    return statistics.median(fn() for _ in range(repeats))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--slide", type=Path, default=B4 if B4.exists() else None)
    parser.add_argument("--mpp", type=float, default=0.688)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_commands_"))
    try:
        torch_s = _median(lambda: _timed([sys.executable, "-c", "import torch"]), args.repeats)
        genes_s = _median(lambda: _timed([*STPREDICT, "genes"]), args.repeats)
        info_s = _median(lambda: _timed([*STPREDICT, "info", "--sample", "--out", str(work / "info")]), args.repeats)
        slide = ["--sample"] if args.slide is None else [str(args.slide), "--mpp", str(args.mpp)]
        predict = [*STPREDICT, "predict", *slide, "--out", str(work / "out")]
        firsts, reruns = [], []
        for i in range(args.repeats):
            cache = {"STPREDICT_CACHE_DIR": str(work / f"cache{i}")}
            firsts.append(_timed(predict, cache))
            reruns.append(_timed(predict, cache))
        first_s, rerun_s = statistics.median(firsts), statistics.median(reruns)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = {
        "import torch (reference)": torch_s,
        "stpredict genes": genes_s,
        "stpredict info --sample": info_s,
        "predict, first run (reference)": first_s,
        "predict, cached rerun": rerun_s,
    }
    print(f"| command | median s ({args.repeats} fresh processes) | ratio |")
    print("|---|---|---|")
    for name, seconds in rows.items():
        ref = first_s if name.startswith("predict") else torch_s
        print(f"| {name} | {seconds:.2f} | {seconds / ref:.2f} |")
    print(json.dumps({k: round(v, 3) for k, v in rows.items()}))


if __name__ == "__main__":
    main()
