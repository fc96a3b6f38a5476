"""A cohort rerun with nothing to recompute against the cohort's first run.

Usage: python benchmarks/bench_cohort_rerun.py [--first-runs 1] [--reruns 3] [--workdir DIR]

The cohort of ``bench_cohort.py`` (the sample under two names and the six full-resolution
her2st images, 8 slides, a manifest with their resolution). Each figure is a fresh process
as a user types it, ``stpredict cohort manifest.csv --out OUT --workers 1``:

- first run: an empty output folder and an empty prediction cache (the reference);
- rerun: the same command on the same folder; every completion record matches, so no
  cluster starts and no worker loads the model.

Medians of the runs; the ratio rerun / first run (issue 20's goal: at most 0.15).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_cohort import cohort_workdir  # noqa: E402

STPREDICT = [sys.executable, "-m", "napari_stpredict.cli"]


def _run(argv: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **env})
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--first-runs", type=int, default=1)
    parser.add_argument("--reruns", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    work, manifest = cohort_workdir(args.workdir, "bench_cohort_rerun_")
    firsts, reruns = [], []
    try:
        for i in range(args.first_runs):
            out, cache = work / f"out{i}", work / f"cache{i}"
            shutil.rmtree(out, ignore_errors=True)
            shutil.rmtree(cache, ignore_errors=True)
            command = [*STPREDICT, "cohort", str(manifest), "--out", str(out), "--workers", "1"]
            env = {"STPREDICT_CACHE_DIR": str(cache)}
            firsts.append(_run(command, env))
            for _ in range(args.reruns):
                reruns.append(_run(command, env))
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    first, rerun = statistics.median(firsts), statistics.median(reruns)
    print(f"\n8 slides, bundled model, CPU, --workers 1; fresh processes ({len(firsts)} first, {len(reruns)} reruns)")
    print("| run | median s | ratio |")
    print("|---|---|---|")
    print(f"| first run (reference) | {first:.1f} | 1.00 |")
    print(f"| rerun, nothing to recompute | {rerun:.1f} | {rerun / first:.3f} |")


if __name__ == "__main__":
    main()
