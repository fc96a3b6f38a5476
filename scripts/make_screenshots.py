"""Screenshots of the real widget for the README (run under Xvfb).

Usage: xvfb-run -a -s "-screen 0 1280x1024x24" python scripts/make_screenshots.py [--out docs/images]

Opens the bundled sample through the plugin, runs the bundled model in the dock widget,
and saves the window (ERBB2 heatmap), then the tumour mask and contour, then the
measured ERBB2 at the sample's spots beside the prediction. Then opens a slide of normal
skin (``../shared/data/wsi/CMU-1-Small-Region.svs``) and saves the window with the
out-of-domain banner and layer.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def main() -> None:
    import napari
    from PIL import Image
    from qtpy.QtWidgets import QApplication

    from napari_stpredict._resources import SAMPLE_SLIDE, sample_data_dir

    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("docs/images"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1400, 900)
    viewer.open(str(sample_data_dir() / SAMPLE_SLIDE), plugin="napari-stpredict")
    _, widget = viewer.window.add_plugin_dock_widget("napari-stpredict", "Predict gene expression")
    widget.device_combo.setCurrentText("cpu")

    def run_and_wait() -> None:
        widget.run()
        t0 = time.time()
        while (widget.worker is not None or widget.prediction is None) and time.time() - t0 < 600:
            QApplication.processEvents()
            time.sleep(0.05)
        if widget.prediction is None:
            raise SystemExit(f"prediction failed: {widget.status.text()}")

    run_and_wait()

    def shot(name: str) -> None:
        viewer.reset_view()
        for _ in range(5):
            QApplication.processEvents()
        Image.fromarray(viewer.screenshot(canvas_only=False, flash=False)).save(args.out / name)
        print("wrote", args.out / name)

    def only(*names: str) -> None:
        for layer in viewer.layers:
            layer.visible = layer.name in names

    only("her2st_C2", "ERBB2 (predicted) [her2st_C2]")
    shot("widget_heatmap.png")
    only("her2st_C2", "tumour mask [her2st_C2]", "tumour (predicted) [her2st_C2]")
    shot("widget_tumour.png")
    only("her2st_C2", "ERBB2 (measured) [her2st_C2]", "tumour (predicted) [her2st_C2]")
    shot("widget_measured.png")
    from qtpy.QtCore import Qt

    widget.gene_list.clearSelection()
    for gene in ("ERBB2", "CD24"):
        widget.gene_list.findItems(gene, Qt.MatchStartsWith)[0].setSelected(True)
    widget.side_by_side_button.click()
    shot("widget_side_by_side.png")
    widget.side_by_side_button.click()

    skin = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "wsi" / "CMU-1-Small-Region.svs"
    if skin.exists():
        for layer in list(viewer.layers):
            viewer.layers.remove(layer)
        viewer.open(str(skin), plugin="napari-stpredict")
        widget.slide_combo.setCurrentText("CMU-1-Small-Region")
        run_and_wait()
        only("CMU-1-Small-Region", "out of domain [CMU-1-Small-Region]")
        shot("widget_out_of_domain.png")
    viewer.close()


if __name__ == "__main__":
    main()
