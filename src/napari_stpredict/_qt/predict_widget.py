"""The prediction dock widget: choose a slide and model, run, then explore genes and tumour.

Thin by design: it gathers inputs, runs `cached_predict_slide` in a background worker
with a progress bar and a Cancel button, and turns the cached `Prediction` into layers
(`napari_stpredict.layers`). Choosing other genes or another threshold never re-runs
the model. Errors become napari notifications.
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtCore import QSettings, Qt
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QCompleter,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QFrame,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSlider,
    QVBoxLayout,
    QWidget,
)

from ..analysis import SlideAnalysis
from ..errors import StPredictError
from ..placement import Placement

BUNDLED = "Bundled model (her2st breast cancer)"
FROM_FILE = "Checkpoint file..."
MODE_ABSOLUTE = "Calibrated (absolute units)"
SORT_NAME = "Genes A-Z"
COLOURS_FIXED = "Colours: training"
COLOURS_SLIDE = "Colours: this slide"
SORT_ACCURACY = "Best r first"
GENE_ROLE = Qt.UserRole  # an item's gene name; its text also shows the held-out r
MODE_SLIDE = "Automatic per slide"
WHOLE_TISSUE = "(whole tissue)"
DISCLAIMER = "Research use only. Not for diagnosis."


def _notify_error(message: str) -> None:
    from napari.utils.notifications import show_error

    show_error(message)


def _notify_warning(message: str) -> None:
    from napari.utils.notifications import show_warning

    show_warning(message)


def canvas_caption(viewer):
    """The viewer's canvas text overlay (``viewer.canvas.overlays.text`` since napari 0.9,
    where ``viewer.text_overlay`` is deprecated)."""
    canvas = getattr(viewer, "canvas", None)
    overlays = getattr(canvas, "overlays", None)
    return overlays.text if overlays is not None and hasattr(overlays, "text") else viewer.text_overlay


class PredictWidget(QWidget):
    """Dock widget: predict spatial gene expression on a slide layer.

    State lives in one `SlideAnalysis` per slide layer; ``prediction``, ``tumor``,
    ``spots``, ``placement`` and ``last_r`` are those of the slide the dock shows.
    """

    @property
    def prediction(self):
        return self.analysis.prediction if self.analysis else None

    @property
    def tumor(self):
        return self.analysis.tumor if self.analysis else None

    @property
    def spots(self):
        return self.analysis.spots if self.analysis else None

    @property
    def placement(self) -> Placement | None:
        return self.analysis.placement if self.analysis else None

    @property
    def last_r(self) -> float | None:
        return self.analysis.last_r if self.analysis else None

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        #: One `SlideAnalysis` per slide layer name; ``analysis`` is the one the dock shows.
        self.analyses: dict[str, SlideAnalysis] = {}
        self.analysis: SlideAnalysis | None = None
        self.model = None
        self._model_key: str | None = None
        self._model_path: Path | None = None
        self.worker = None
        self._cancel = threading.Event()
        self._progress = None
        self._typed_mpp: dict[str, float] = {}  # layer name -> resolution typed for it
        self._array_slides: dict[str, tuple] = {}  # layer name -> (its data, the ArraySlide made of it)
        self._pending_placement: Placement | None = None
        self._pending_layer: str | None = None
        self._settings = QSettings("napari-stpredict", "predict-widget")
        self._build()
        self.viewer.layers.events.inserted.connect(self._refresh_layer_choices)
        self.viewer.layers.events.removed.connect(self._refresh_layer_choices)
        self.viewer.layers.selection.events.active.connect(self._on_active_layer)
        self.viewer.mouse_move_callbacks.append(self._on_mouse_move)
        self._refresh_layer_choices()

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt's name
        """Stop a running prediction and let go of the viewer's events."""
        self._cancel.set()
        for emitter, callback in (
            (self.viewer.layers.events.inserted, self._refresh_layer_choices),
            (self.viewer.layers.events.removed, self._refresh_layer_choices),
            (self.viewer.layers.selection.events.active, self._on_active_layer),
        ):
            emitter.disconnect(callback)
        if self._on_mouse_move in self.viewer.mouse_move_callbacks:
            self.viewer.mouse_move_callbacks.remove(self._on_mouse_move)
        super().closeEvent(event)

    def _on_mouse_move(self, viewer, event) -> None:
        self.readout.setText(self.readout_at(event.position))

    def readout_at(self, world_position) -> str:
        """What the slide shown in the dock predicts at a world position (whatever layer is
        selected): gene and value with units, confidence, tumour score, out-of-domain flag."""
        if self.analysis is None:
            return ""
        from ..inference.prediction import UNITS

        l0 = self.placement.world_to_l0(np.asarray(world_position, float)[-2:])[0]
        spot = self.analysis.spot_at(l0)
        if spot is None:
            return "no prediction here"
        prediction = self.prediction
        values = [
            f"{gene} {float(prediction.adata.X[spot, prediction._gene_index(gene)]):.2f}"
            for gene in self.analysis.shown_genes[:3]
        ]
        text = f"{', '.join(values)} {UNITS}; confidence {prediction.confidence[spot]:.2f}"
        if self.tumor is not None:
            text += f"; tumour score {self.tumor.score[spot]:.2f} (threshold {self.tumor.threshold:.2f})"
        if "out_of_domain" in prediction.adata.obs and bool(prediction.adata.obs["out_of_domain"].iloc[spot]):
            text += "; OUT OF DOMAIN"
        return text

    def _on_active_layer(self, event=None) -> None:
        """Colour bar and caption follow the heatmap the user selects."""
        layer = self.viewer.layers.selection.active
        meta = layer.metadata.get("stpredict", {}) if layer is not None else {}
        if meta.get("kind") != "heatmap":
            return
        for other in self.viewer.layers:
            if other.metadata.get("stpredict", {}).get("kind") == "heatmap":
                other.colorbar.visible = other.name == layer.name
        caption = canvas_caption(self.viewer)
        caption.text = f"{meta['gene']}: predicted {meta['units']} ({meta.get('slide_layer', '')})"
        caption.visible = True

    # --- UI ----------------------------------------------------------------------
    def _build(self) -> None:
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        self.setMinimumWidth(400)
        scroll.setFrameShape(QFrame.NoFrame)
        content = QWidget()
        scroll.setWidget(content)
        outer.addWidget(scroll)
        layout = QVBoxLayout(content)
        disclaimer = QLabel(f"<b>{DISCLAIMER}</b>")
        layout.addWidget(disclaimer)
        self.model_info = QLabel("")
        self.model_info.setWordWrap(True)
        layout.addWidget(self.model_info)

        form = QFormLayout()
        self.slide_combo = QComboBox()
        self.slide_combo.currentIndexChanged.connect(self._on_slide_changed)
        form.addRow("Slide layer", self.slide_combo)
        self.mpp_spin = QDoubleSpinBox()
        self.mpp_spin.setRange(0.0, 50.0)
        self.mpp_spin.setDecimals(4)
        self.mpp_spin.setSuffix(" µm/px")
        self.mpp_spin.setToolTip("Resolution of the slide layer; needed when the file does not record it")
        self.mpp_spin.valueChanged.connect(self._remember_typed_mpp)
        form.addRow("Resolution", self.mpp_spin)
        self.model_combo = QComboBox()
        self.model_combo.addItems([BUNDLED, FROM_FILE])
        self.model_combo.activated.connect(self._on_model_choice)
        form.addRow("Model", self.model_combo)
        self.device_combo = QComboBox()
        self.device_combo.addItems(self._devices())
        form.addRow("Device", self.device_combo)
        self.stride_spin = QDoubleSpinBox()
        self.stride_spin.setRange(14.0, 1000.0)
        self.stride_spin.setValue(112.0)
        self.stride_spin.setSuffix(" µm")
        self.stride_spin.setToolTip("Distance between predicted spots; smaller gives smoother maps and takes longer")
        form.addRow("Stride", self.stride_spin)
        self.region_combo = QComboBox()
        self.region_combo.setToolTip("Predict only inside the polygons of a Shapes layer")
        form.addRow("Region", self.region_combo)
        self.stain_check = QCheckBox("Check stain (H&&E only)")
        self.stain_check.setChecked(True)
        self.stain_check.setToolTip(
            "Fluorescence, IHC (DAB), grayscale and blank images give meaningless maps; "
            "untick only if you know the slide is H&E"
        )
        form.addRow("", self.stain_check)
        layout.addLayout(form)

        buttons = QHBoxLayout()
        self.run_button = QPushButton("Run prediction")
        self.run_button.clicked.connect(self.run)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        layout.addLayout(buttons)
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 1)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.status)
        self.readout = QLabel("")
        self.readout.setWordWrap(True)
        self.readout.setToolTip("The prediction under the mouse cursor")
        layout.addWidget(self.readout)
        # What the user must know before reading any map: out of domain, unusual stain.
        self.trust_banner = QLabel("")
        self.trust_banner.setWordWrap(True)
        self.trust_banner.setVisible(False)
        layout.addWidget(self.trust_banner)

        genes_box = QGroupBox("Genes")
        g = QVBoxLayout(genes_box)
        self.gene_search = QLineEdit()
        self.gene_search.setPlaceholderText("type to search genes...")
        self.gene_search.textChanged.connect(self._filter_genes)
        self.gene_search.returnPressed.connect(self._select_typed_gene)
        g.addWidget(self.gene_search)
        self.gene_sort = QComboBox()
        self.gene_sort.addItems([SORT_NAME, SORT_ACCURACY])
        self.gene_sort.setToolTip(
            "Held-out r: how well the model predicted each gene on patients it never saw "
            "(its shipped evaluation); trust maps of well-predicted genes more"
        )
        self.gene_sort.currentIndexChanged.connect(lambda *_: self._fill_gene_list())
        self.colour_range = QComboBox()
        self.colour_range.addItems([COLOURS_FIXED, COLOURS_SLIDE])
        self.colour_range.setToolTip(
            "Training range: each gene's colours span its range over the model's training "
            "spots, the same on every slide (comparable). This slide: its own 2nd-98th "
            "percentile (more contrast, not comparable)"
        )
        self.colour_range.currentIndexChanged.connect(
            lambda *_: self.show_genes(self.analysis.shown_genes) if self.analysis else None
        )
        sort_row = QHBoxLayout()
        sort_row.addWidget(self.gene_sort)
        sort_row.addWidget(self.colour_range)
        g.addLayout(sort_row)
        self.gene_list = QListWidget()
        self.gene_list.setSelectionMode(QAbstractItemView.ExtendedSelection)
        from qtpy.QtGui import QFontDatabase

        self.gene_list.setFont(QFontDatabase.systemFont(QFontDatabase.FixedFont))  # so the r column lines up
        self.gene_list.setMaximumHeight(160)
        g.addWidget(self.gene_list)
        row = QHBoxLayout()
        self.preset_combo = QComboBox()
        self.preset_combo.addItems(["Presets...", "Marker panel", "HER2 amplicon"])
        self.preset_combo.activated.connect(self._apply_preset)
        self.show_genes_button = QPushButton("Show selected genes")
        self.show_genes_button.clicked.connect(self.show_selected_genes)
        self.side_by_side_button = QPushButton("Side by side")
        self.side_by_side_button.setCheckable(True)
        self.side_by_side_button.setToolTip(
            "Two selected genes next to each other, each over the slide (napari's grid view); press again to go back"
        )
        self.side_by_side_button.toggled.connect(self.set_side_by_side)
        row.addWidget(self.preset_combo)
        row.addWidget(self.show_genes_button)
        g.addLayout(row)
        g.addWidget(self.side_by_side_button)
        layout.addWidget(genes_box)

        tumor_box = QGroupBox("Tumour")
        t = QFormLayout(tumor_box)
        self.markers_edit = QLineEdit()
        self.markers_edit.setToolTip("Marker genes, separated by commas; the score is their mean z-score")
        self.markers_edit.editingFinished.connect(self._on_markers_edited)
        t.addRow("Markers", self.markers_edit)
        self.threshold_mode = QComboBox()
        self.threshold_mode.addItems([MODE_ABSOLUTE, MODE_SLIDE])
        self.threshold_mode.setToolTip(
            "Calibrated: scores in the units of the model's training spots and the "
            "threshold chosen on them (comparable between slides; a slide without "
            "tumour gets little or none). Per slide: this slide's own scores and an "
            "automatic threshold, which always splits the slide in two."
        )
        self.threshold_mode.currentIndexChanged.connect(lambda *_: self.update_tumor(threshold=None))
        t.addRow("Units", self.threshold_mode)
        slider_row = QHBoxLayout()
        self.threshold_slider = QSlider(Qt.Horizontal)
        self.threshold_slider.setRange(0, 1000)
        self.threshold_slider.valueChanged.connect(self._on_threshold_slider)
        self.threshold_label = QLabel("-")
        self.auto_button = QPushButton("Auto")
        self.auto_button.clicked.connect(self.reset_threshold)
        slider_row.addWidget(self.threshold_slider)
        slider_row.addWidget(self.threshold_label)
        slider_row.addWidget(self.auto_button)
        t.addRow("Threshold", slider_row)
        layout.addWidget(tumor_box)

        measured_box = QGroupBox("Measured spots (optional)")
        m = QVBoxLayout(measured_box)
        self.load_spots_button = QPushButton("Load measured spots (.h5ad)...")
        self.load_spots_button.clicked.connect(self._choose_spots_file)
        self.r_label = QLabel("")
        self.r_label.setWordWrap(True)
        m.addWidget(self.load_spots_button)
        m.addWidget(self.r_label)
        layout.addWidget(measured_box)

        export_box = QGroupBox("Export")
        e = QHBoxLayout(export_box)
        self.save_table_button = QPushButton("Spot table...")
        self.save_table_button.clicked.connect(self._choose_table_file)
        self.save_geojson_button = QPushButton("Tumour GeoJSON...")
        self.save_geojson_button.clicked.connect(self._choose_geojson_file)
        e.addWidget(self.save_table_button)
        e.addWidget(self.save_geojson_button)
        layout.addWidget(export_box)
        hint = QLabel("Heatmaps and the mask: File > Save Selected Layers as .tif (GeoTIFF).")
        hint.setWordWrap(True)
        layout.addWidget(hint)
        layout.addStretch(1)
        self._set_result_controls(False)

    @staticmethod
    def _devices() -> list[str]:
        import importlib.util

        devices = ["auto", "cpu"]
        if importlib.util.find_spec("torch") is not None:
            import torch

            if torch.cuda.is_available():
                devices.append("cuda")
            if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
                devices.append("mps")
        return devices

    def _set_result_controls(self, enabled: bool) -> None:
        for w in (
            self.gene_search,
            self.gene_list,
            self.preset_combo,
            self.show_genes_button,
            self.side_by_side_button,
            self.markers_edit,
            self.threshold_slider,
            self.auto_button,
            self.load_spots_button,
            self.save_table_button,
            self.save_geojson_button,
        ):
            w.setEnabled(enabled)

    # --- layer choices -------------------------------------------------------------
    def _image_layers(self):
        from napari.layers import Image

        return [layer for layer in self.viewer.layers if isinstance(layer, Image) and layer.rgb]

    def _refresh_layer_choices(self, *_: Any) -> None:
        from napari.layers import Shapes

        current = self.slide_combo.currentText()
        self.slide_combo.blockSignals(True)
        self.slide_combo.clear()
        self.slide_combo.addItems([layer.name for layer in self._image_layers()])
        if current in [layer.name for layer in self._image_layers()]:
            self.slide_combo.setCurrentText(current)
        self.slide_combo.blockSignals(False)
        region = self.region_combo.currentText()
        self.region_combo.clear()
        self.region_combo.addItems(
            [WHOLE_TISSUE]
            + [
                lyr.name
                for lyr in self.viewer.layers
                if isinstance(lyr, Shapes) and not lyr.name.startswith("tumour contour")
            ]
        )
        if region:
            self.region_combo.setCurrentText(region)
        self._on_slide_changed()

    def _selected_slide_layer(self):
        name = self.slide_combo.currentText()
        return self.viewer.layers[name] if name in self.viewer.layers else None  # noqa: SIM401 - LayerList has no get

    def _on_slide_changed(self, *_: Any) -> None:
        from .._reader import slide_of_layer

        layer = self._selected_slide_layer()
        slide = slide_of_layer(layer) if layer is not None else None
        # Only a resolution the file records locks the field; one typed earlier stays editable
        # (and is remembered per layer, never carried over to another slide).
        recorded = slide._file_mpp()[0] if slide is not None else None
        self.mpp_spin.setEnabled(recorded is None)
        self.mpp_spin.blockSignals(True)
        typed = self._typed_mpp.get(layer.name if layer else "", 0.0)
        self.mpp_spin.setValue(recorded if recorded is not None else typed)
        self.mpp_spin.blockSignals(False)
        self._show_analysis(layer.name if layer is not None else None)

    def _show_analysis(self, layer_name: str | None) -> None:
        """Show the results of the slide chosen in the dock (its genes, mask, r, banner)."""
        analysis = self.analyses.get(layer_name) if layer_name else None
        if analysis is self.analysis:
            return  # layer events fire often: refill only when the slide changes
        self.analysis = analysis
        if analysis is None:
            self._set_result_controls(False)
            self.gene_list.clear()
            self.trust_banner.setVisible(False)
            self.r_label.setText("")
            self.threshold_label.setText("-")
            return
        self._fill_result_controls()
        self._show_trust(analysis.prediction)
        if analysis.tumor is not None:
            self.threshold_label.setText(f"{analysis.tumor.threshold:.2f} ({analysis.tumor.fraction:.0%})")
        self.r_label.setText(
            f"Pearson r = {analysis.last_r:.2f} ({analysis.spots_source})" if analysis.spots is not None else ""
        )
        self.status.setText(f"showing {layer_name}: {len(analysis.prediction)} spots")

    def _remember_typed_mpp(self, value: float) -> None:
        layer = self._selected_slide_layer()
        if layer is not None and self.mpp_spin.isEnabled():
            self._typed_mpp[layer.name] = value

    def _on_model_choice(self, index: int) -> None:
        if self.model_combo.itemText(index) != FROM_FILE:
            return
        path, _ = QFileDialog.getOpenFileName(
            self, "Choose a napari-stpredict checkpoint", self._last_dir(), "Checkpoints (*.pt *.ckpt);;All files (*)"
        )
        if path:
            self.set_model_path(path)
        else:
            self.model_combo.setCurrentText(BUNDLED)

    def set_model_path(self, path: str | Path | None) -> None:
        """Use a checkpoint file (None: the bundled model)."""
        if path is None:
            self.model_combo.setCurrentText(BUNDLED)
            self._model_path = None
            return
        path = Path(path)
        self._remember_dir(path)
        label = f"File: {path.name}"
        if self.model_combo.findText(label) < 0:
            self.model_combo.insertItem(1, label)
        self.model_combo.setCurrentText(label)
        self._model_path = path

    def _last_dir(self) -> str:
        return str(self._settings.value("last_dir", str(Path.home())))

    def _remember_dir(self, path: Path) -> None:
        self._settings.setValue("last_dir", str(Path(path).parent))

    # --- running ---------------------------------------------------------------------
    def _slide_for_layer(self, layer):
        from .._reader import slide_of_layer
        from ..io.base import ArraySlide, _mpp_pair

        slide = slide_of_layer(layer)
        mpp = self.mpp_spin.value() or None
        if slide is not None:
            if slide._file_mpp()[0] is None:
                if mpp is None:
                    raise StPredictError(
                        f"{slide.name}: the slide does not record its resolution; enter it "
                        "(µm per pixel) in the Resolution field"
                    )
                slide._fallback_mpp = (mpp, mpp)  # the value typed now, also on a rerun
            return slide
        if mpp is None:
            raise StPredictError(f"layer {layer.name!r}: enter its resolution (µm per pixel) to predict on it")
        data = layer.data[0] if layer.multiscale else layer.data
        cached = self._array_slides.get(layer.name)
        if cached is None or cached[0] is not data:
            # Built once per layer (a copy and a halving pyramid, so thumbnails are cheap); reruns reuse it.
            image = np.asarray(data)[..., :3].astype(np.uint8)
            levels = 1 + max(0, int(np.log2(max(image.shape[:2]) / 1024)))
            cached = (data, ArraySlide(image, mpp=mpp, name=layer.name, levels=levels))
            self._array_slides[layer.name] = cached
        slide = cached[1]
        slide._mpp = _mpp_pair(mpp, layer.name)  # the resolution typed now
        return slide

    def _region(self):
        name = self.region_combo.currentText()
        if not name or name == WHOLE_TISSUE or name not in self.viewer.layers:
            return None
        layer = self.viewer.layers[name]
        slide_placement = Placement.of_layer(self._selected_slide_layer())
        region_placement = Placement.of_layer(layer)
        polygons = [
            slide_placement.world_to_l0(region_placement.data_to_world(np.asarray(shape, float)[:, -2:]))
            for shape in layer.data
        ]
        if not polygons:
            raise StPredictError(f"region layer {name!r} has no shapes; draw polygons or choose {WHOLE_TISSUE}")
        return polygons

    def run(self) -> None:
        """Start a prediction in a background worker."""
        from napari.qt.threading import create_worker

        layer = self._selected_slide_layer()
        if layer is None:
            _notify_error("Open a slide first (File > Open, or File > Open Sample > ST Predict)")
            return
        try:
            slide = self._slide_for_layer(layer)
            roi = self._region()
        except StPredictError as exc:
            _notify_error(str(exc))
            return
        self._cancel = threading.Event()
        # Prediction layers take the slide layer's own transform (read here, on the GUI thread).
        self._pending_placement = Placement.of_layer(layer)
        self._pending_layer = layer.name
        params = {
            "stride_um": self.stride_spin.value(),
            "roi": roi,
            "cancel_event": self._cancel,
            "check_stain": self.stain_check.isChecked(),
        }
        # _ignore_errors: _on_error turns them into one clear notification (no re-raise, no traceback popup)
        # Every input is read here, on the GUI thread; the worker never touches a Qt widget.
        from ..model import default_model_path

        model_path, device = self._model_path or default_model_path(), self.device_combo.currentText()
        self.worker = create_worker(
            self._work, slide, params, model_path, device, _start_thread=False, _ignore_errors=True
        )
        self.worker.yielded.connect(self._on_progress)
        self.worker.returned.connect(self._on_result)
        self.worker.errored.connect(self._on_error)
        self.worker.finished.connect(self._on_finished)
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.status.setText("starting...")
        self.worker.start()

    def _work(self, slide, params, path: Path, device: str):
        """Runs in the worker thread: load the model (once), then predict with the cache."""
        from ..inference.cache import cached_predict_slide
        from ..model import load_model

        key = f"{path}|{device}"
        if self.model is None or self._model_key != key:
            yield {"stage": "model", "done": 0, "total": 0, "message": f"loading model {path.name}"}
            self.model = load_model(path, device=device)
            self._model_key = key
        prediction = yield from cached_predict_slide(slide, self.model, model_path=path, **params)
        return prediction

    def cancel(self) -> None:
        """Stop the running prediction between batches; nothing is added or written."""
        self._cancel.set()
        if self.worker is not None:
            self.worker.quit()
        self.status.setText("cancelling...")

    def _on_progress(self, progress: dict) -> None:
        if self._cancel.is_set():
            return  # progress queued before the cancel: the status says "cancelling"
        total, done = progress.get("total", 0), progress.get("done", 0)
        self.progress_bar.setRange(0, max(total, 1) if total else 0)
        self.progress_bar.setValue(done)
        if progress.get("stage") == "predict":
            self.status.setText(f"predicting: {done} / {total} spots")
        else:
            self.status.setText(progress.get("message", progress.get("stage", "")))
        if total and self._progress is None:
            from napari.utils import progress as napari_progress

            self._progress = napari_progress(total=total, desc="ST prediction")
        if self._progress is not None and total:
            self._progress.n = done
            self._progress.refresh()

    def _on_error(self, exc: Exception) -> None:
        from ..inference.predict import PredictionCancelled

        if isinstance(exc, PredictionCancelled):
            self.status.setText("cancelled")
            return
        self.status.setText(f"failed: {exc}")
        _notify_error(f"Prediction failed: {exc}")

    def _on_finished(self) -> None:
        if self._progress is not None:
            self._progress.close()
            self._progress = None
        if self._cancel.is_set():
            self.status.setText("cancelled")  # not a stale "predicting n / m" queued before the cancel
            self.progress_bar.setValue(0)
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        self.progress_bar.setRange(0, 1)
        self.worker = None

    def _on_result(self, prediction) -> None:
        if prediction is None:
            return
        self.set_prediction(prediction, placement=self._pending_placement, layer_name=self._pending_layer)

    # --- results -----------------------------------------------------------------------
    def set_prediction(self, prediction, placement: Placement | None = None, layer_name: str | None = None) -> None:
        """Show a prediction: genes to choose from, first gene, tumour mask, confidence.

        Parameters
        ----------
        placement : Placement, optional
            The slide layer's transform (default: the frame of this plugin's reader).
        layer_name : str, optional
            The slide layer it belongs to (default: the layer chosen in the dock). Its
            previous analysis, and its measured spots, are replaced; other slides keep theirs.
        """
        from ..layers import confidence_layer, domain_layer

        layer_name = layer_name or self.slide_combo.currentText() or prediction.meta["slide"].get("name", "slide")
        previous = self.analyses.get(layer_name)
        self.analysis = SlideAnalysis(layer_name, prediction, placement or Placement.of_prediction(prediction))
        if previous is not None and previous.spots is not None:
            with contextlib.suppress(ValueError):  # the same slide rerun: its measured spots still belong to it
                self.analysis.set_spots(previous.spots, previous.spots_source)
        self.analyses[layer_name] = self.analysis
        self._fill_result_controls()
        meta = prediction.meta
        cached = " (from cache)" if meta.get("cache") == "hit" else ""
        self.status.setText(f"{len(prediction)} spots predicted{cached}")
        self._upsert(*confidence_layer(prediction, self.placement))
        if "domain_distance" in prediction.adata.obs and prediction.meta.get("tumor_calibration") is not None:
            self._upsert(*domain_layer(prediction, self.placement))
        self._show_trust(prediction, notify=True)
        genes = prediction.genes
        first = "ERBB2" if "ERBB2" in genes else genes[0]
        self.show_genes([first])
        self.update_tumor(threshold=None)
        self._maybe_load_sample_spots()

    def _gene_accuracy(self) -> dict[str, float | None]:
        """Held-out r per gene from the loaded model's evaluation, when it is this prediction's model."""
        from ..model.accuracy import gene_accuracy

        if self.model is None or self.prediction is None or self.model.source != self.prediction.meta["model"]["name"]:
            return {}
        return gene_accuracy(self.model)[0]

    def _fill_gene_list(self) -> None:
        """The prediction's genes, sorted by name or by held-out r, each with its r."""
        from qtpy.QtWidgets import QListWidgetItem

        if self.prediction is None:
            return
        accuracy = self._gene_accuracy()
        genes = sorted(self.prediction.genes, key=str.upper)
        if self.gene_sort.currentText() == SORT_ACCURACY:
            genes.sort(key=lambda g: -accuracy[g] if accuracy.get(g) is not None else float("inf"))
        selected = set(self._selected_genes())
        self.gene_list.clear()
        for gene in genes:
            r = accuracy.get(gene)
            item = QListWidgetItem(f"{gene:<10}  r {r:.2f}" if r is not None else gene)
            item.setData(GENE_ROLE, gene)
            self.gene_list.addItem(item)
            item.setSelected(gene in selected)

    def _selected_genes(self) -> list[str]:
        return [item.data(GENE_ROLE) for item in self.gene_list.selectedItems()]

    def _fill_result_controls(self) -> None:
        """Gene list, model line and markers of the current analysis."""
        prediction = self.prediction
        genes = prediction.genes
        self._fill_gene_list()
        completer = QCompleter(genes, self)
        completer.setCaseSensitivity(Qt.CaseInsensitive)
        completer.setFilterMode(Qt.MatchContains)
        self.gene_search.setCompleter(completer)
        meta = prediction.meta
        trained = ", ".join(meta["model"].get("trained_on", [])) or "unknown sections"
        self.model_info.setText(
            f"Model {meta['model']['name']}: trained on her2st sections {trained}; "
            f"{len(genes)} genes, units {meta['units']}."
        )
        self.markers_edit.setText(", ".join(self.tumor.markers if self.tumor else self._panel()))
        self._set_result_controls(True)

    def _show_trust(self, prediction, notify: bool = False) -> None:
        """The banner: out-of-domain verdict and stain warnings, coloured by severity."""
        from ..inference.trust import trust_lines

        lines = trust_lines(prediction.meta)
        verdict = (prediction.meta.get("trust") or {}).get("domain", {}).get("verdict", "unknown")
        colour = {"out of domain": "#b00020", "partly out of domain": "#b35900"}.get(verdict, "#7a5c00")
        if lines:
            self.trust_banner.setText("<br>".join(f"⚠ {line}" for line in lines))
            self.trust_banner.setStyleSheet(
                f"background-color: {colour}; color: white; padding: 6px; border-radius: 4px;"
            )
            self.trust_banner.setVisible(True)
            if notify:
                _notify_warning(f"{prediction.meta['slide'].get('name', 'slide')}: {lines[0]}")
        else:
            self.trust_banner.setText("")
            self.trust_banner.setVisible(False)

    def _panel(self) -> list[str]:
        from ..inference.tumor import model_panel

        return model_panel(self.prediction)

    def _upsert(self, data, kwargs, layer_type):
        """Add a layer of the current slide, or replace the data (and placement) of the one
        with the same name; names carry the slide layer's name, so each slide keeps its own."""
        kwargs = dict(kwargs)
        name = kwargs["name"] = self.analysis.label(kwargs["name"])
        meta = kwargs.get("metadata", {}).get("stpredict")
        if meta is not None:
            kwargs["metadata"] = {"stpredict": {**meta, "slide_layer": self.analysis.layer_name}}
        if name in self.viewer.layers:
            layer = self.viewer.layers[name]
            layer.data = data
            for key in ("scale", "translate", "affine", "units", "contrast_limits", "metadata"):
                if key in kwargs:
                    setattr(layer, key, kwargs[key])
            if "affine" not in kwargs:
                layer.affine = np.eye(3)
            return layer
        add = getattr(self.viewer, f"add_{layer_type}")
        return add(data, **kwargs)

    def show_genes(self, genes: list[str]) -> None:
        """Add (or refresh) a heatmap layer per gene, from the cached prediction."""
        from ..layers import heatmap_layer

        if self.prediction is None:
            return
        shown = None
        for gene in genes:
            try:
                shown = self._upsert(
                    *heatmap_layer(
                        self.prediction,
                        gene,
                        placement=self.placement,
                        fixed_limits=self.colour_range.currentText() == COLOURS_FIXED,
                    )
                )
            except KeyError as exc:
                _notify_error(str(exc).strip("'\""))
        if shown is not None:
            # One colour bar at a time (the last gene shown), captioned with gene and units.
            for layer in self.viewer.layers:
                if layer.metadata.get("stpredict", {}).get("kind") == "heatmap":
                    layer.colorbar.visible = layer.name == shown.name  # plugin viewers hand out proxies: no `is`
            self.analysis.shown_genes = list(genes)
            info = shown.metadata["stpredict"]
            caption = canvas_caption(self.viewer)
            caption.text = f"{info['gene']}: predicted {info['units']}"
            caption.visible = True
        self._update_measured(genes[0] if genes else None)

    def set_side_by_side(self, on: bool) -> None:
        """Show two genes next to each other in napari's grid view, each over its own view of
        the slide (a second layer sharing the slide's data: nothing is read twice); off
        restores the single view and what was visible."""
        if not on:
            self.viewer.grid.enabled = False
            for layer in [layer for layer in self.viewer.layers if self._is_mine(layer, "slide_copy")]:
                self.viewer.layers.remove(layer)
            for name, visible in getattr(self, "_visibility_before_grid", {}).items():
                if name in self.viewer.layers:
                    self.viewer.layers[name].visible = visible
            self._visibility_before_grid = {}
            return
        genes = (self._selected_genes() or [])[:2]
        if len(genes) < 2 and self.analysis is not None:
            genes = (genes + [g for g in self.analysis.shown_genes if g not in genes])[:2]
        if self.analysis is None or len(genes) < 2:
            _notify_warning("Select two genes in the list to show them side by side")
            self.side_by_side_button.blockSignals(True)
            self.side_by_side_button.setChecked(False)
            self.side_by_side_button.blockSignals(False)
            return
        self.show_genes(genes)
        slide = self.viewer.layers[self.analysis.layer_name]
        copy = self.viewer.add_image(
            slide.data,
            multiscale=slide.multiscale,
            rgb=True,
            scale=slide.scale,
            translate=slide.translate,
            affine=slide.affine,
            units=slide.units,
            name=self.analysis.label("slide, second view"),
            metadata={"stpredict": {"kind": "slide_copy", "slide_layer": self.analysis.layer_name}},
        )
        heat = [self.viewer.layers[self.analysis.label(f"{gene} (predicted)")] for gene in genes]
        ordered = [slide, heat[0], copy, heat[1]]
        self._visibility_before_grid = {layer.name: layer.visible for layer in self.viewer.layers}
        for layer in self.viewer.layers:
            layer.visible = any(layer.name == keep.name for keep in ordered)
        # The grid puts each run of `stride` layers, counted from the bottom, in a view of its
        # own and drops views with nothing visible: slide + first gene, second view + second gene.
        for index, layer in enumerate(ordered):
            self.viewer.layers.move(self.viewer.layers.index(layer), index)
        for layer in heat:
            if hasattr(layer, "name_overlay"):  # napari >= 0.9: the gene's name in its view
                layer.name_overlay.visible = True
        self.viewer.grid.stride = 2
        self.viewer.grid.enabled = True
        self.viewer.reset_view()

    def show_selected_genes(self) -> None:
        genes = self._selected_genes()
        if not genes:
            _notify_warning("Select genes in the list first (type to search)")
            return
        self.show_genes(genes)

    def _filter_genes(self, text: str) -> None:
        text = text.strip().upper()
        for i in range(self.gene_list.count()):
            item = self.gene_list.item(i)
            item.setHidden(bool(text) and text not in item.data(GENE_ROLE).upper())

    def _select_typed_gene(self) -> None:
        text = self.gene_search.text().strip().upper()
        for i in range(self.gene_list.count()):
            item = self.gene_list.item(i)
            if item.data(GENE_ROLE).upper() == text:
                item.setSelected(True)
                self.show_genes([item.data(GENE_ROLE)])
                return
        if text and self.prediction is not None:
            _notify_warning(
                f"{self.gene_search.text().strip()} is not predicted by this model (it predicts "
                f"{len(self.prediction.genes)} genes; type part of a name to search)"
            )

    def _apply_preset(self, index: int) -> None:
        from ..training.genes import HER2_AMPLICON

        name = self.preset_combo.itemText(index)
        genes = self._panel() if name == "Marker panel" else list(HER2_AMPLICON) if name == "HER2 amplicon" else []
        self.gene_list.clearSelection()
        for i in range(self.gene_list.count()):
            if self.gene_list.item(i).data(GENE_ROLE) in genes:
                self.gene_list.item(i).setSelected(True)
        self.preset_combo.setCurrentIndex(0)

    # --- tumour ------------------------------------------------------------------------
    def _markers(self) -> list[str]:
        return [m.strip() for m in self.markers_edit.text().replace(";", ",").split(",") if m.strip()]

    def _on_markers_edited(self) -> None:
        self.update_tumor(threshold=None)

    def update_tumor(self, threshold: float | None = None) -> None:
        """Recompute the tumour mask (automatic threshold when None) and update its layers."""
        from ..inference.tumor import tumor_mask
        from ..layers import tumor_contour_layer, tumor_labels_layer

        if self.prediction is None:
            return
        try:
            mode = "slide" if self.threshold_mode.currentText() == MODE_SLIDE else "auto"
            mask = tumor_mask(self.prediction, self._markers() or None, threshold=threshold, mode=mode)
        except ValueError as exc:
            _notify_error(str(exc))
            return
        if mask.missing:
            _notify_warning(f"markers not predicted by this model: {', '.join(mask.missing)}")
        self.analysis.tumor = mask
        self._upsert(*tumor_labels_layer(self.prediction, mask, self.placement))
        self._upsert(*tumor_contour_layer(self.prediction, mask, self.placement))
        if threshold is None:
            lo = min(float(mask.score.min()), mask.threshold)
            hi = max(float(mask.score.max()), mask.threshold)
            self._score_range = (lo, hi)
            self.threshold_slider.blockSignals(True)
            self.threshold_slider.setValue(int(round((mask.threshold - lo) / max(hi - lo, 1e-9) * 1000)))
            self.threshold_slider.blockSignals(False)
        self.threshold_label.setText(
            f"{mask.threshold:.2f} ({'auto' if mask.automatic else 'manual'}, {mask.fraction:.0%})"
        )
        self.threshold_label.setToolTip(mask.describe() + (f"; {mask.note}" if mask.note else ""))
        if mask.note and threshold is None:
            self.status.setText(f"{self.status.text().split(' | ')[0]} | tumour: {mask.note}")

    def _on_threshold_slider(self, value: int) -> None:
        if self.prediction is None or not hasattr(self, "_score_range"):
            return
        lo, hi = self._score_range
        self.update_tumor(threshold=lo + (hi - lo) * value / 1000)

    def set_threshold(self, threshold: float) -> None:
        """Set a manual tumour threshold (as the slider does)."""
        lo, hi = self._score_range
        self.threshold_slider.setValue(int(round((threshold - lo) / max(hi - lo, 1e-9) * 1000)))

    def reset_threshold(self) -> None:
        self.update_tumor(threshold=None)

    # --- measured spots --------------------------------------------------------------------
    def _maybe_load_sample_spots(self) -> None:
        from .._resources import SAMPLE_SPOTS, sample_data_dir

        if self.prediction is None or self.spots is not None:
            return
        if self.prediction.meta["slide"]["name"] == "her2st_C2.tiff":
            try:
                self.load_spots(sample_data_dir() / SAMPLE_SPOTS)
            except (OSError, StPredictError, ValueError) as exc:
                _notify_warning(f"could not load the sample's measured spots: {exc}")

    def _choose_spots_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Measured spots (scanpy/squidpy .h5ad)", self._last_dir(), "AnnData (*.h5ad)"
        )
        if path:
            self._remember_dir(Path(path))
            try:
                self.load_spots(path)
            except (OSError, StPredictError, ValueError, KeyError) as exc:
                _notify_error(f"{Path(path).name}: {exc}")

    def load_spots(self, path: str | Path) -> None:
        """Use measured spots (``obsm["spatial"]`` in level-0 pixels of this slide) for comparison.

        Raises
        ------
        ValueError
            When no slide has been predicted yet, or the spots do not lie on this slide.
        """
        from ..io.st_data import read_st_h5ad

        if self.analysis is None:
            raise ValueError("run a prediction on the slide first; measured spots are compared with it")
        self.analysis.set_spots(read_st_h5ad(path), Path(path).name)
        shown = self.analysis.shown_genes
        self._update_measured(shown[0] if shown else None)

    def _update_measured(self, gene: str | None) -> None:
        from ..layers import measured_points_layer

        if self.spots is None or self.prediction is None or gene is None:
            return
        try:
            data, kwargs, kind = measured_points_layer(
                self.spots,
                gene,
                placement=self.placement,
                mpp=(self.prediction.meta["mpp_x"], self.prediction.meta["mpp_y"]),
            )
        except KeyError as exc:
            self.r_label.setText(str(exc).strip("'\""))
            return
        kwargs["name"] = self.analysis.label(kwargs["name"])
        kwargs["metadata"] = {"stpredict": {**kwargs["metadata"]["stpredict"], "slide_layer": self.analysis.layer_name}}
        existing = [layer for layer in self.viewer.layers if self._is_mine(layer, "measured")]
        if existing and len(existing[0].data) == len(data):
            # Same spots, another gene: recolour in place (removing and adding a Points layer
            # costs half a second of scene-graph work in napari).
            layer = existing[0]
            layer.features = kwargs["features"]
            layer.face_contrast_limits = kwargs["face_contrast_limits"]
            layer.face_color = "expression"
            layer.metadata = kwargs["metadata"]
            layer.name = kwargs["name"]
        else:
            for layer in existing:
                self.viewer.layers.remove(layer)
            self.viewer.add_points(data, **kwargs)
        self.analysis.last_r = self.analysis.pearson(gene, kwargs["features"]["expression"])
        self.r_label.setText(
            f"{gene}: predicted vs measured at {self.spots.n_obs} spots, Pearson r = {self.last_r:.2f}"
        )

    def _is_mine(self, layer, kind: str) -> bool:
        """Whether ``layer`` is a prediction layer of ``kind`` of the slide the dock shows."""
        meta = layer.metadata.get("stpredict", {})
        return meta.get("kind") == kind and meta.get("slide_layer") == self.analysis.layer_name

    # --- export ----------------------------------------------------------------------------
    def _choose_table_file(self) -> None:
        path, _ = QFileDialog.getSaveFileName(
            self, "Save spot table", self._last_dir(), "AnnData (*.h5ad);;CSV (*.csv)"
        )
        if path:
            self._remember_dir(Path(path))
            self._guarded(self.save_table, path)

    def _choose_geojson_file(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save tumour contours", self._last_dir(), "GeoJSON (*.geojson)")
        if path:
            self._remember_dir(Path(path))
            self._guarded(self.save_geojson, path)

    def _guarded(self, func, path) -> None:
        try:
            func(path)
            self.status.setText(f"saved {Path(path).name}")
        except (OSError, StPredictError, ValueError) as exc:
            _notify_error(f"could not save {Path(path).name}: {exc}")

    def save_table(self, path: str | Path) -> Path:
        """Spot table: ``.h5ad`` (full prediction) or ``.csv`` (spot centres, confidence, all genes)."""
        import pandas as pd

        from ..io.atomic import atomic_path

        path = Path(path)
        if path.suffix.lower() == ".csv":
            obs = self.prediction.adata.obs
            table = pd.concat(
                [
                    obs,
                    pd.DataFrame(np.asarray(self.prediction.adata.X), index=obs.index, columns=self.prediction.genes),
                ],
                axis=1,
            )
            with atomic_path(path) as tmp:
                table.to_csv(tmp, index_label="spot")
            return path
        return self.prediction.save(path if path.suffix.lower() == ".h5ad" else path.with_suffix(".h5ad"))

    def save_geojson(self, path: str | Path) -> Path:
        """Tumour contours as a GeoJSON FeatureCollection (level-0 pixels; QuPath imports it)."""
        from ..inference.export import export_tumor_geojson

        if self.tumor is None:
            raise StPredictError("no tumour mask yet: run a prediction first")
        return export_tumor_geojson(self.prediction, self.tumor, path)
