"""Benchmark: time from "Run" to the first heatmap in a real napari viewer, and gene switching.

Needs a display: ``xvfb-run -a -s "-screen 0 1280x1024x24" python benchmarks/bench_widget.py [--repeats 3]``.

In one fresh process per repeat: open a slide through the plugin (default: the her2st B4
image from ``../shared/data``, ~280 spots at 112 µm; ``--slide`` for another, with
``--mpp``), dock the widget, and

1. first run: press Run with an empty prediction cache; the time until the ERBB2
   heatmap layer exists includes importing torch/timm and loading the model;
2. rerun: Run again with another empty cache folder (the model is loaded): the engine's
   whole-slide time as a user waits for it;
3. cached rerun: Run again with the rerun's cache (a hit: a layer from napari's reader
   is keyed by its pixels); the goal is at most 0.2x the first run;
4. reference, the same process: the model alone on the same spots' patches, already in
   memory (embedding, retrieval, out-of-domain distance), batch 64;
5. gene switch: time to show another gene's heatmap from the cached prediction, until the
   frame with it is drawn; reference, the same run: redrawing the unchanged map (one frame
   of napari's rendering, software OpenGL here).

Reports medians over repeats, and rerun / model-alone (the goal: at most 1.2).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

_CHILD = r"""
import json, sys, tempfile, time, os
from pathlib import Path
import numpy as np
slide_path, mpp = sys.argv[1], (float(sys.argv[2]) if sys.argv[2] != "none" else None)
import napari
from qtpy.QtWidgets import QApplication
viewer = napari.Viewer(show=True)
# Plain JPEGs are napari's own reader's (the her2st images): the resolution is typed, as users do.
viewer.open(slide_path, plugin="napari" if slide_path.lower().endswith((".jpg", ".png")) else "napari-stpredict")
_, widget = viewer.window.add_plugin_dock_widget("napari-stpredict", "Predict gene expression")
widget.device_combo.setCurrentText("cpu")
if mpp:
    widget.mpp_spin.setValue(mpp)

from qtpy.QtCore import QEventLoop

def run_once(cache=None):
    # Waits in Qt's own event loop, as napari does (a busy processEvents() loop would
    # take ~0.7 s of the two cores from the prediction); done = worker finished, i.e.
    # after the ERBB2 map, the mask and the other layers were added.
    os.environ["STPREDICT_CACHE_DIR"] = cache or tempfile.mkdtemp()
    t0 = time.perf_counter()
    widget.run()
    loop = QEventLoop()
    widget.worker.finished.connect(loop.quit)
    loop.exec()
    QApplication.processEvents()  # the frame that shows it
    assert any(l.name.startswith("ERBB2 (predicted)") for l in viewer.layers)
    return time.perf_counter() - t0

first = run_once()
rerun = run_once()
# The same Run once more with the rerun's cache: a cache hit (napari's reader gives the
# layer no file, so the key is the layer's pixels), no model call.
cached = run_once(os.environ["STPREDICT_CACHE_DIR"])
prediction, model = widget.prediction, widget.model
from napari_stpredict.io.patches import read_patches
slide = widget._slide_for_layer(widget._selected_slide_layer())
patches = read_patches(slide, prediction.l0_centres, model.io.patch_um, model.io.input_px)
t0 = time.perf_counter()
for i in range(0, len(patches), 64):
    emb, feats = model.embed_with_features(patches[i:i + 64])
    model.predict_embeddings(emb)
    model.domain_distance(feats)
model_alone = time.perf_counter() - t0
QApplication.processEvents()
switch, switch_code, frame = [], [], []
# Two passes over the genes: the first shows each map for the first time in the session.
for gene in ("GRB7", "CD24", "EPCAM", "SCD", "FASN", "MUCL1", "ERBB2") * 2:
    t0 = time.perf_counter()
    widget.show_genes([gene])
    t1 = time.perf_counter()
    QApplication.processEvents()  # one frame drawn with the new map
    switch.append(time.perf_counter() - t0)
    switch_code.append(t1 - t0)
    # reference, same run: redrawing the same layer without any change (one frame)
    heat = viewer.layers[widget.analysis.browsing_layer]
    t0 = time.perf_counter()
    heat.refresh()
    QApplication.processEvents()
    frame.append(time.perf_counter() - t0)
print(json.dumps({"spots": len(prediction), "first_run_s": first, "rerun_s": rerun, "cached_rerun_s": cached,
                  "model_alone_s": model_alone,
                  "gene_switch_ms": 1000 * float(np.median(switch)),
                  "gene_switch_first_ms": 1000 * float(np.median(switch[:7])),
                  "gene_switch_code_ms": 1000 * float(np.median(switch_code)),
                  "frame_ms": 1000 * float(np.median(frame))}))
viewer.close()
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--slide", type=Path, default=None)
    parser.add_argument("--mpp", type=float, default=None)
    args = parser.parse_args()
    slide, mpp = args.slide, args.mpp
    if slide is None:
        data = Path(__file__).resolve().parents[2] / "shared" / "data" / "her2st" / "ST-imgs" / "B" / "B4"
        slide, mpp = next(data.glob("*.jpg")), 0.688
    runs = []
    for _ in range(args.repeats):
        out = subprocess.run(
            [sys.executable, "-c", _CHILD, str(slide), str(mpp) if mpp else "none"],
            capture_output=True,
            text=True,
            timeout=1200,
        )
        if out.returncode != 0:
            raise SystemExit(out.stderr[-3000:])
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(runs[-1], flush=True)
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    print(f"\n{slide.name}: {med['spots']:.0f} spots, medians of {len(runs)} fresh processes")
    print(f"first run after napari starts (imports, model load): {med['first_run_s']:.1f} s")
    print(
        f"rerun, Run -> ERBB2 heatmap: {med['rerun_s']:.1f} s; model alone on the same spots: "
        f"{med['model_alone_s']:.1f} s; ratio {med['rerun_s'] / med['model_alone_s']:.2f} (goal <= 1.2)"
    )
    print(
        f"the same Run again (a cache hit): {med['cached_rerun_s']:.2f} s, "
        f"{med['cached_rerun_s'] / med['first_run_s']:.2f}x the first run, "
        f"{med['cached_rerun_s'] / med['rerun_s']:.2f}x a run with the model loaded (goal <= 0.2)"
    )
    print(
        f"switching genes: {med['gene_switch_ms']:.0f} ms to the drawn map (goal < 50 ms; each gene's first "
        f"time in the session {med['gene_switch_first_ms']:.0f} ms), of which "
        f"{med['gene_switch_code_ms']:.0f} ms before drawing; reference, redrawing the unchanged map: "
        f"{med['frame_ms']:.0f} ms (ratio {med['gene_switch_ms'] / med['frame_ms']:.2f})"
    )


if __name__ == "__main__":
    main()
