"""Benchmark: time from opening a slide to the first rendered view, and memory growth.

For the bundled sample (7,400 x 6,300 px) and a generated 50,000 x 50,000 px pyramidal
JPEG TIFF (made once in a temporary folder), each run in a fresh process with a real
napari viewer (needs a display: run under ``xvfb-run -s "-screen 0 1280x1024x24"``):

1. start the viewer and draw one empty frame (OpenGL set-up is not the plugin's cost);
2. ``viewer.open(path, plugin="napari-stpredict")`` and take a canvas screenshot, which
   forces the first render: that is "open -> first view";
3. memory growth = resident memory after minus before.

References, measured in the same run the same way:

- "numpy": napari showing the slide's coarsest level as an in-memory numpy array
  (napari's own floor for drawing that image, no file and no reader);
- "napari reader": ``viewer.open`` of that same coarsest level saved as a PNG, read by
  napari's built-in reader (napari's own speed at opening a file: its plugin lookup,
  "Opening Files" progress bar and image decode), a file 1/256 of the sample's pixels.

Medians over ``--repeats`` fresh processes.

Usage: xvfb-run -a -s "-screen 0 1280x1024x24" python benchmarks/bench_open_view.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

LARGE_SIZE = 50_000
TILE = 256


def make_large_tiff(path: Path, size: int = LARGE_SIZE) -> Path:
    """Write a size x size pyramidal JPEG TIFF at 0.25 µm/px (a 40x scan, 12.5 mm square).

    Like a real slide it is mostly glass, with tissue (real H&E tiles from the sample,
    repeated) in an ellipse covering about a fifth of it. Tiles are JPEG-encoded once
    and written as pre-compressed bytes, so a 2.5 gigapixel slide takes seconds to make.
    """
    if path.exists():
        return path
    import imagecodecs
    import numpy as np
    import tifffile

    from napari_stpredict._resources import SAMPLE_SLIDE, sample_data_dir
    from napari_stpredict.io.slide import open_slide

    with open_slide(sample_data_dir() / SAMPLE_SLIDE) as sample:
        tiles = [
            imagecodecs.jpeg8_encode(sample.read_region((x, y), 0, (TILE, TILE)), level=80)
            for x, y in [(3000, 2500), (4000, 3500), (2500, 4000), (5000, 2000)]
        ]
        glass = imagecodecs.jpeg8_encode(sample.read_region((100, 100), 0, (TILE, TILE)), level=80)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part")
    levels = []
    side = size
    while True:
        levels.append(side)
        if side <= 1024:
            break
        side = (side + 1) // 2

    def segments(side: int):
        n = -(-side // TILE)
        for i in range(n * n):
            r, c = divmod(i, n)
            u, v = (c + 0.5) / n - 0.5, (r + 0.5) / n - 0.5
            inside = (u / 0.3) ** 2 + (v / 0.22) ** 2 <= 1.0
            yield tiles[(i * 7 + r) % len(tiles)] if inside else glass

    res = 1e4 / 0.25  # pixels per cm: 0.25 µm/px, a 40x scan
    with tifffile.TiffWriter(tmp, bigtiff=True) as tif:
        for i, side in enumerate(levels):
            tif.write(
                segments(side),
                shape=(side, side, 3),
                dtype=np.uint8,
                photometric="rgb",
                compression="jpeg",
                tile=(TILE, TILE),
                subfiletype=0 if i == 0 else 1,
                resolution=(res / 2**i, res / 2**i),
                resolutionunit="CENTIMETER",
                metadata=None,
            )
    tmp.replace(path)
    return path


_CHILD = r"""
import json, sys, time, gc
import numpy as np, psutil
import napari
path, mode = sys.argv[1], sys.argv[2]
proc = psutil.Process()
viewer = napari.Viewer(show=True)
viewer.screenshot(canvas_only=True, flash=False)   # GL context and first frame
if mode == "reference":  # "numpy"
    from napari_stpredict.io.slide import open_slide
    with open_slide(path) as s:
        lvl = s.level_count - 1
        array = s.read_region((0, 0), lvl, s.level_dimensions[lvl])
gc.collect()

def measure():
    rss0 = proc.memory_info().rss
    t0 = time.perf_counter()
    if mode == "plugin":
        viewer.open(path, plugin="napari-stpredict")
    elif mode == "napari-reader":
        viewer.open(path, plugin="napari")
    else:
        viewer.add_image(array, rgb=True)
    shot = viewer.screenshot(canvas_only=True, flash=False)
    elapsed = time.perf_counter() - t0
    rss1 = proc.memory_info().rss
    assert shot[..., :3].std() > 5, "blank canvas"
    return elapsed, (rss1 - rss0) / 2**20

cold = measure()                     # first slide of the session: one-time imports included
viewer.layers.clear(); gc.collect()
warm = measure()                     # a further slide in the same session
print(json.dumps({"cold_s": cold[0], "cold_mb": cold[1], "warm_s": warm[0], "warm_mb": warm[1]}))
viewer.close()
"""


def coarsest_level_png(slide_path: Path, workdir: Path) -> Path:
    """The slide's coarsest level saved as a PNG (for napari's own reader)."""
    from PIL import Image

    from napari_stpredict.io.slide import open_slide

    out = workdir / f"{slide_path.stem}_coarsest.png"
    if not out.exists():
        workdir.mkdir(parents=True, exist_ok=True)
        with open_slide(slide_path) as s:
            lvl = s.level_count - 1
            Image.fromarray(s.read_region((0, 0), lvl, s.level_dimensions[lvl])).save(out)
    return out


def run_child(path: Path, mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", _CHILD, str(path), mode], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"benchmark child failed for {path} ({mode}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    from napari_stpredict._resources import SAMPLE_SLIDE, sample_data_dir

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "stpredict-bench")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()

    files = {
        "sample 7,400 x 6,300": sample_data_dir() / SAMPLE_SLIDE,
        f"generated {LARGE_SIZE:,} x {LARGE_SIZE:,}": make_large_tiff(args.workdir / f"large_{LARGE_SIZE}_v2.tiff"),
    }
    results = {}
    keys = ("cold_s", "cold_mb", "warm_s", "warm_mb")
    for label, path in files.items():
        png = coarsest_level_png(path, args.workdir)
        runs = {
            mode: [run_child(png if mode == "napari-reader" else path, mode) for _ in range(args.repeats)]
            for mode in ("plugin", "reference", "napari-reader")
        }
        med = {mode: {k: statistics.median(r[k] for r in rs) for k in keys} for mode, rs in runs.items()}
        results[label] = {"median": med, "runs": runs, "file_mb": path.stat().st_size / 2**20}
    print(f"\nopen -> first rendered view, median of {args.repeats} fresh processes")
    print("cold: first slide opened in a new napari session (includes one-time imports: dask.array,")
    print("      napari's unit registry); warm: a further slide opened in the same session")
    header = (
        f"{'slide':28s} {'file MB':>8s} {'':9s} {'plugin s':>9s} {'plugin MB':>10s} {'numpy s':>8s} "
        f"{'numpy MB':>8s} {'x numpy':>8s} {'reader s':>9s} {'x reader':>9s}"
    )
    print(header)
    for label, r in results.items():
        p, ref, nap = r["median"]["plugin"], r["median"]["reference"], r["median"]["napari-reader"]
        for phase in ("cold", "warm"):
            print(
                f"{label:28s} {r['file_mb']:8.0f} {phase:9s} {p[phase + '_s']:9.3f} {p[phase + '_mb']:10.1f} "
                f"{ref[phase + '_s']:8.3f} {ref[phase + '_mb']:8.1f} {p[phase + '_s'] / ref[phase + '_s']:8.2f} "
                f"{nap[phase + '_s']:9.3f} {p[phase + '_s'] / nap[phase + '_s']:9.2f}"
            )
    small, large = (r["median"]["plugin"] for r in results.values())
    for phase in ("cold", "warm"):
        print(
            f"{phase}: large / sample time x{large[phase + '_s'] / small[phase + '_s']:.2f}; memory growth "
            f"{large[phase + '_mb']:.0f} MB (large) vs {small[phase + '_mb']:.0f} MB (sample)"
        )
    print("target: <= 0.5 s and <= 150 MB for both files")
    print("numpy = napari drawing the coarsest level from an in-memory numpy array, same run")
    print("reader = napari's own reader opening that coarsest level saved as a PNG, same run")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
