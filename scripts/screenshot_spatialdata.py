"""Screenshot of the SpatialData export opened in napari-spatialdata, for the README.

Usage: xvfb-run -a -s "-screen 0 1280x1024x24" python scripts/screenshot_spatialdata.py [--out docs/images]

Predicts the bundled sample with the bundled model (``stpredict predict --sample --export
spatialdata``), opens ``prediction.zarr`` with napari-spatialdata's ``Interactive``, adds the
slide, the spots and the tumour contour, colours the spots by ERBB2 through its View
widget (as a user does: double-click the gene) and saves the window.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.modules["triton"] = None  # torchvision after a viewer under software OpenGL (see README)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("docs/images"))
    parser.add_argument("--gene", default="ERBB2")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    from napari_stpredict.cli import main as stpredict

    work = Path(tempfile.mkdtemp(prefix="stpredict-sdata-"))
    if stpredict(["predict", "--sample", "--out", str(work), "--export", "spatialdata", "--genes", args.gene]):
        raise SystemExit("prediction failed")

    import napari
    import spatialdata as sd
    from napari_spatialdata import Interactive
    from PIL import Image
    from qtpy.QtWidgets import QApplication

    sdata = sd.read_zarr(work / "her2st_C2" / "prediction.zarr")
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1400, 900)
    interactive = Interactive(sdata, headless=True)
    for element in ("slide", "spots", "tumour"):
        interactive.add_element(element, "global")
        t0 = time.time()
        while element not in viewer.layers and time.time() - t0 < 120:  # napari-spatialdata's worker
            QApplication.processEvents()
            time.sleep(0.05)
    spots = viewer.layers["spots"]
    viewer.layers.selection.active = spots
    view = viewer.window.dock_widgets["View (napari-spatialdata)"]
    view.var_widget._onAction([args.gene])
    viewer.layers["tumour"].edge_color = "white"
    viewer.layers["tumour"].edge_width = 12
    viewer.reset_view()
    for _ in range(10):
        QApplication.processEvents()
    path = args.out / "spatialdata_ERBB2.png"
    Image.fromarray(viewer.screenshot(canvas_only=False, flash=False)).save(path)
    print("wrote", path)
    viewer.close()


if __name__ == "__main__":
    main()
