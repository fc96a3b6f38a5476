"""The prediction dock widget: choose a slide and model, run, then explore genes and tumour.

The dock composes thin panels (`panels`: widgets only) over one headless `SlideAnalysis`
per slide layer, and `SlideLayers` for everything drawn in the viewer. It gathers inputs
on the GUI thread, runs `cached_predict_slide` in a background worker with progress and
a Cancel that answers within a second, and turns the cached `Prediction` into layers.
Choosing other genes or another threshold never re-runs the model. Errors become napari
notifications.
"""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtCore import QSettings, Qt
from qtpy.QtWidgets import QCompleter, QFileDialog, QFrame, QLabel, QScrollArea, QVBoxLayout, QWidget

from ..analysis import SlideAnalysis
from ..errors import StPredictError
from ..placement import Placement
from .common import BUNDLED, FROM_FILE, WHOLE_TISSUE, canvas_caption, notify_error, notify_warning
from .panels import ExportPanel, GenesPanel, MeasuredPanel, RunPanel, TumourPanel
from .slide_layers import SlideLayers

__all__ = ["PredictWidget", "canvas_caption"]

PROGRESS_INTERVAL_S = 0.3  # between redraws of the progress bars while spots are predicted


class PredictWidget(QWidget):
    """Dock widget: predict spatial gene expression on a slide layer.

    State lives in one `SlideAnalysis` per slide layer; ``prediction``, ``tumor``,
    ``spots``, ``placement`` and ``last_r`` are those of the slide the dock shows. The
    panels' controls are reachable as attributes of the dock too (``gene_list``,
    ``run_button``, ...), for scripts and tests.
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
        self.layers = SlideLayers(napari_viewer)
        #: One `SlideAnalysis` per slide layer name; ``analysis`` is the one the dock shows.
        self.analyses: dict[str, SlideAnalysis] = {}
        self.analysis: SlideAnalysis | None = None
        self.model = None
        self._model_key: str | None = None
        self._model_path: Path | None = None
        self.worker = None
        self._cancel = threading.Event()
        self._last_stage: str | None = None
        self._last_shown = 0.0
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

    # --- UI ----------------------------------------------------------------------
    def _build(self) -> None:
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        # Always there: with a bar that appears as needed, the panels stayed laid out for the
        # width without it, and the Run panel's Cancel button, the spin boxes' "+" and the
        # progress bar ran under the bar.
        scroll.setVerticalScrollBarPolicy(Qt.ScrollBarAlwaysOn)
        self.setMinimumWidth(400)
        scroll.setFrameShape(QFrame.NoFrame)
        content = QWidget()
        scroll.setWidget(content)
        outer.addWidget(scroll)
        layout = QVBoxLayout(content)

        self.run_panel = RunPanel(self._devices())
        self.genes_panel = GenesPanel()
        self.tumour_panel = TumourPanel()
        self.measured_panel = MeasuredPanel()
        self.export_panel = ExportPanel()
        for panel in (self.run_panel, self.genes_panel, self.tumour_panel, self.measured_panel, self.export_panel):
            layout.addWidget(panel)
            # The panels' controls as the dock's own attributes (scripts and tests use them).
            for name, value in vars(panel).items():
                if not name.startswith("_") and isinstance(value, QWidget):
                    setattr(self, name, value)
        hint = QLabel("Heatmaps and the mask: File > Save Selected Layers as .tif (GeoTIFF).")
        hint.setWordWrap(True)
        layout.addWidget(hint)
        layout.addStretch(1)
        self._scroll = scroll

        run = self.run_panel
        run.slide_combo.currentIndexChanged.connect(self._on_slide_changed)
        run.mpp_spin.valueChanged.connect(self._remember_typed_mpp)
        run.to_um_button.clicked.connect(self.put_slide_in_um)
        run.model_combo.activated.connect(self._on_model_choice)
        run.run_button.clicked.connect(self.run)
        run.cancel_button.clicked.connect(self.cancel)
        genes = self.genes_panel
        genes.gene_search.returnPressed.connect(self._select_typed_gene)
        genes.gene_sort.currentIndexChanged.connect(lambda *_: self._fill_gene_list())
        genes.colour_range.currentIndexChanged.connect(
            lambda *_: self.show_genes(self.analysis.shown_genes) if self.analysis else None
        )
        genes.show_out_of_domain.toggled.connect(
            lambda *_: self.show_genes(self.analysis.shown_genes) if self.analysis else None
        )
        genes.preset_combo.activated.connect(self._apply_preset)
        genes.show_genes_button.clicked.connect(self.show_selected_genes)
        genes.side_by_side_button.toggled.connect(self.set_side_by_side)
        tumour = self.tumour_panel
        tumour.markers_edit.editingFinished.connect(lambda: self.update_tumor(threshold=None))
        tumour.threshold_mode.currentIndexChanged.connect(lambda *_: self.update_tumor(threshold=None))
        tumour.threshold_slider.valueChanged.connect(self._on_threshold_slider)
        tumour.auto_button.clicked.connect(self.reset_threshold)
        self.measured_panel.load_spots_button.clicked.connect(self._choose_spots_file)
        self.export_panel.save_table_button.clicked.connect(self._choose_table_file)
        self.export_panel.save_geojson_button.clicked.connect(self._choose_geojson_file)
        self.export_panel.save_qupath_button.clicked.connect(self._choose_qupath_file)
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
        for panel in (self.genes_panel, self.tumour_panel, self.measured_panel, self.export_panel):
            panel.setEnabled(enabled)

    def showEvent(self, event) -> None:  # noqa: N802 - Qt's name
        """Wide enough for the widest panel beside the scroll bar (known once styled:
        before the dock is shown the panels report 50 px less)."""
        super().showEvent(event)
        content = self._scroll.widget()
        need = content.minimumSizeHint().width() + self._scroll.verticalScrollBar().sizeHint().width() + 2
        if need > self.minimumWidth():
            self.setMinimumWidth(need)

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

    # --- viewer events -------------------------------------------------------------
    def _on_mouse_move(self, viewer, event) -> None:
        self.readout.setText(self.readout_at(event.position))

    def readout_at(self, world_position) -> str:
        """What the slide shown in the dock predicts at a world position (whatever layer is
        selected): gene and value with units, confidence, tumour score, out-of-domain flag."""
        if self.analysis is None:
            return ""
        l0 = self.placement.world_to_l0(np.asarray(world_position, float)[-2:])[0]
        return self.analysis.readout(l0)

    def _on_active_layer(self, event=None) -> None:
        """Colour bar and caption follow the heatmap the user selects."""
        self.layers.follow(self.viewer.layers.selection.active)

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
                # the user's own regions, not the tumour contours the plugin drew
                if isinstance(lyr, Shapes) and lyr.metadata.get("stpredict", {}).get("kind") != "tumor_contour"
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
        self._update_to_um_button()
        self._show_analysis(layer.name if layer is not None else None)

    def _show_analysis(self, layer_name: str | None) -> None:
        """Show the results of the slide chosen in the dock (its genes, mask, r, banner)."""
        analysis = self.analyses.get(layer_name) if layer_name else None
        if analysis is self.analysis:
            return  # layer events fire often: refill only when the slide changes
        self.analysis = analysis
        self.layers.focus(layer_name if analysis is not None else None)
        if analysis is None:
            self._set_result_controls(False)
            self.gene_list.clear()
            self.trust_banner.setVisible(False)
            self.r_label.setText("")
            self.threshold_label.setText("-")
            # One status line per slide: not the message of the slide shown before.
            self.status.setText(f"{layer_name}: not predicted yet" if layer_name else "")
            return
        self._fill_result_controls()
        self._show_trust(analysis.prediction)
        if analysis.tumor is not None:
            # The slider takes this slide's score range and threshold (it kept the previous one's).
            self.tumour_panel.show_mask(analysis.tumor, automatic=True)
        self.r_label.setText(
            f"Pearson r = {analysis.last_r:.2f} ({analysis.spots_source})" if analysis.spots is not None else ""
        )
        self.status.setText(f"showing {layer_name}: {len(analysis.prediction)} spots")

    def _remember_typed_mpp(self, value: float) -> None:
        layer = self._selected_slide_layer()
        if layer is not None and self.mpp_spin.isEnabled():
            self._typed_mpp[layer.name] = value
        self._update_to_um_button()

    def _update_to_um_button(self) -> None:
        layer = self._selected_slide_layer()
        in_pixels = layer is not None and Placement.of_layer(layer).units is None
        self.run_panel.to_um_button.setEnabled(bool(in_pixels and self.mpp_spin.value() > 0))

    def put_slide_in_um(self) -> None:
        """Give the chosen slide layer, opened in pixels, the physical scale of the
        resolution typed for it, so that it and its prediction layers share one frame (µm)
        with slides opened by this plugin's reader; napari then stops warning of
        inconsistent units and the slides sit side by side at their true sizes."""
        layer = self._selected_slide_layer()
        mpp = self.mpp_spin.value()
        if layer is None or mpp <= 0:
            notify_error("choose a slide layer and enter its resolution (µm per pixel) first")
            return
        n = layer.ndim
        layer.scale = [*list(layer.scale)[: n - 2], *(np.asarray(layer.scale[-2:], float) * mpp)]
        layer.translate = [*list(layer.translate)[: n - 2], *(np.asarray(layer.translate[-2:], float) * mpp)]
        layer.units = [*list(layer.units)[: n - 2], "µm", "µm"]
        analysis = self.analyses.get(layer.name)
        if analysis is not None:  # its maps, mask and spots follow the slide's new frame
            analysis.placement = Placement.of_layer(layer)
            self.layers.show_prediction(analysis)
            if analysis.shown_genes:
                self.show_genes(analysis.shown_genes)
            if analysis.tumor is not None:
                self.layers.show_tumour(analysis)
            if analysis.spots is not None and analysis.shown_genes:
                self._update_measured(analysis.shown_genes[0])
        self._update_to_um_button()
        self.viewer.reset_view()

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

        from ..model import default_model_path

        layer = self._selected_slide_layer()
        if layer is None:
            notify_error("Open a slide first (File > Open, or File > Open Sample > ST Predict)")
            return
        try:
            slide = self._slide_for_layer(layer)
            roi = self._region()
        except StPredictError as exc:
            notify_error(str(exc))
            self.status.setText(str(exc))  # whole, in the dock: napari's toast cuts long messages short
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
        # Every input is read here, on the GUI thread; the worker never touches a Qt widget.
        model_path, device = self._model_path or default_model_path(), self.device_combo.currentText()
        # _ignore_errors: _on_error turns them into one clear notification (no re-raise, no traceback popup)
        self.worker = create_worker(
            self._work, slide, params, model_path, device, _start_thread=False, _ignore_errors=True
        )
        self.worker.yielded.connect(self._on_progress)
        self.worker.returned.connect(self._on_result)
        self.worker.errored.connect(self._on_error)
        self.worker.finished.connect(self._on_finished)
        self.run_panel.set_running(True)
        self._last_stage = None
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
        now = time.monotonic()
        stage = progress.get("stage")
        last_batch = progress.get("done") == progress.get("total")
        if stage == self._last_stage == "predict" and not last_batch and now - self._last_shown < PROGRESS_INTERVAL_S:
            # Redrawing the bars (ours and napari's activity dock) after every batch took
            # 1.3 s of a 5 s run on two cores: a few updates a second read the same.
            return
        self._last_stage, self._last_shown = stage, now
        # The dock's own bar only: a napari.utils.progress in the activity dock as well cost
        # 1.1 s of a 5.5 s run (its Qt bar redraws while the model runs on the same cores).
        self.run_panel.show_progress(progress)

    def _on_error(self, exc: Exception) -> None:
        from ..inference.predict import PredictionCancelled

        if isinstance(exc, PredictionCancelled):
            self.status.setText("cancelled")
            return
        self.status.setText(f"failed: {exc}")
        notify_error(f"Prediction failed: {exc}")

    def _on_finished(self) -> None:
        if self._cancel.is_set():
            self.status.setText("cancelled")  # not a stale "predicting n / m" queued before the cancel
            self.progress_bar.setValue(0)
        self.run_panel.set_running(False)
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
        layer_name = layer_name or self.slide_combo.currentText() or prediction.meta.slide.name
        previous = self.analyses.get(layer_name)
        self.analysis = SlideAnalysis(layer_name, prediction, placement or Placement.of_prediction(prediction))
        if previous is not None:
            self.analysis.browsing_layer = previous.browsing_layer  # the rerun refills the same map layer
            if previous.spots is not None:
                with contextlib.suppress(ValueError):  # the same slide rerun: its measured spots still belong to it
                    self.analysis.set_spots(previous.spots, previous.spots_source)
        self.analyses[layer_name] = self.analysis
        self._fill_result_controls()
        cached = " (from cache)" if prediction.meta.cache == "hit" else ""
        self.status.setText(f"{len(prediction)} spots predicted{cached}")
        genes = prediction.genes
        if previous is not None:  # a rerun: no map of the previous run stays on screen
            self.layers.refill_maps(
                self.analysis,
                fixed_limits=self.genes_panel.fixed_colours,
                show_out_of_domain=self.genes_panel.show_out_of_domain.isChecked(),
            )
        # The first map first (on top, with the caption): the other layers follow once it is on screen.
        self.show_genes(["ERBB2" if "ERBB2" in genes else genes[0]])
        self.layers.show_prediction(self.analysis)
        self._show_trust(prediction, notify=True)
        self.update_tumor(threshold=None)
        self._maybe_load_sample_spots()

    def _gene_accuracy(self) -> dict[str, float | None]:
        """Held-out r per gene from the loaded model's evaluation, when it is this prediction's model."""
        from ..model.accuracy import gene_accuracy

        if self.model is None or self.prediction is None or self.model.source != self.prediction.meta.model.name:
            return {}
        return gene_accuracy(self.model)[0]

    def _fill_gene_list(self) -> None:
        if self.prediction is not None:
            self.genes_panel.fill(self.prediction.genes, self._gene_accuracy())

    def _selected_genes(self) -> list[str]:
        return self.genes_panel.selected()

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
        trained = ", ".join(meta.model.trained_on) or "unknown sections"
        self.model_info.setText(
            f"Model {meta.model.name}: trained on her2st sections {trained}; {len(genes)} genes, units {meta.units}."
        )
        self.markers_edit.setText(", ".join(self.tumor.markers if self.tumor else self._panel()))
        self._set_result_controls(True)

    def _show_trust(self, prediction, notify: bool = False) -> None:
        """The banner: out-of-domain verdict and stain warnings, coloured by severity."""
        from ..inference.trust import trust_lines

        lines = trust_lines(prediction.meta)
        verdict = prediction.trust.domain.verdict or "unknown"
        self.run_panel.show_trust(lines, verdict)
        if lines and notify:
            notify_warning(f"{prediction.meta.slide.name}: {lines[0]}")

    def _panel(self) -> list[str]:
        from ..inference.tumor import model_panel

        return model_panel(self.prediction)

    # --- genes -----------------------------------------------------------------------
    def show_genes(self, genes: list[str]) -> None:
        """Show heatmaps of ``genes`` from the cached prediction (one gene: browse in place;
        several: a layer each), and recolour the measured spots by the first."""
        if self.prediction is None:
            return
        self.layers.show_genes(
            self.analysis,
            genes,
            fixed_limits=self.genes_panel.fixed_colours,
            show_out_of_domain=self.genes_panel.show_out_of_domain.isChecked(),
        )
        self._update_measured(genes[0] if genes else None)

    def set_side_by_side(self, on: bool) -> None:
        """Two genes next to each other in napari's grid view; off restores the single view."""
        if not on:
            self.layers.single_view(self.analysis)
            return
        genes = self._selected_genes()[:2]
        if len(genes) < 2 and self.analysis is not None:
            genes = (genes + [g for g in self.analysis.shown_genes if g not in genes])[:2]
        if self.analysis is None or len(genes) < 2:
            notify_warning("Select two genes in the list to show them side by side")
            self.genes_panel.set_side_by_side_checked(False)
            return
        self.layers.side_by_side(
            self.analysis,
            genes,
            fixed_limits=self.genes_panel.fixed_colours,
            show_out_of_domain=self.genes_panel.show_out_of_domain.isChecked(),
        )
        self._update_measured(genes[0])

    def show_selected_genes(self) -> None:
        genes = self._selected_genes()
        if not genes:
            notify_warning("Select genes in the list first (type to search)")
            return
        self.show_genes(genes)

    def _select_typed_gene(self) -> None:
        gene = self.genes_panel.typed_gene()
        if gene is not None:
            self.show_genes([gene])
            return
        text = self.gene_search.text().strip()
        if text and self.prediction is not None:
            notify_warning(
                f"{text} is not predicted by this model (it predicts {len(self.prediction.genes)} genes; "
                "type part of a name to search)"
            )

    def _apply_preset(self, index: int) -> None:
        from ..vocabulary import HER2_AMPLICON

        name = self.preset_combo.itemText(index)
        genes = self._panel() if name == "Marker panel" else list(HER2_AMPLICON) if name == "HER2 amplicon" else []
        self.genes_panel.select(genes)
        self.preset_combo.setCurrentIndex(0)

    # --- tumour ------------------------------------------------------------------------
    def update_tumor(self, threshold: float | None = None) -> None:
        """Recompute the tumour mask (automatic threshold when None) and update its layers."""
        from ..inference.tumor import tumor_mask

        if self.prediction is None:
            return
        try:
            mask = tumor_mask(
                self.prediction, self.tumour_panel.markers() or None, threshold=threshold, mode=self.tumour_panel.mode
            )
        except ValueError as exc:
            notify_error(str(exc))
            return
        if mask.missing:
            notify_warning(f"markers not predicted by this model: {', '.join(mask.missing)}")
        self.analysis.tumor = mask
        self.layers.show_tumour(self.analysis)
        self.tumour_panel.show_mask(mask, automatic=threshold is None)
        if mask.note and threshold is None:
            self.status.setText(f"{self.status.text().split(' | ')[0]} | tumour: {mask.note}")

    def _on_threshold_slider(self, value: int) -> None:
        threshold = self.tumour_panel.threshold_at(value)
        if self.prediction is not None and threshold is not None:
            self.update_tumor(threshold=threshold)

    def set_threshold(self, threshold: float) -> None:
        """Set a manual tumour threshold (as the slider does)."""
        self.threshold_slider.setValue(self.tumour_panel.position_of(threshold))

    def reset_threshold(self) -> None:
        self.update_tumor(threshold=None)

    # --- measured spots --------------------------------------------------------------------
    def _maybe_load_sample_spots(self) -> None:
        from .._resources import SAMPLE_SPOTS, sample_data_dir

        if self.prediction is None or self.spots is not None:
            return
        if self.prediction.meta.slide.name == "her2st_C2.tiff":
            try:
                self.load_spots(sample_data_dir() / SAMPLE_SPOTS)
            except (OSError, StPredictError, ValueError) as exc:
                notify_warning(f"could not load the sample's measured spots: {exc}")

    def _choose_spots_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Measured spots (scanpy/squidpy .h5ad)", self._last_dir(), "AnnData (*.h5ad)"
        )
        if path:
            self._remember_dir(Path(path))
            try:
                self.load_spots(path)
            except (OSError, StPredictError, ValueError, KeyError) as exc:
                notify_error(f"{Path(path).name}: {exc}")

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
        if self.spots is None or self.prediction is None or gene is None:
            return
        self.r_label.setText(self.layers.show_measured(self.analysis, gene))

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

    def _choose_qupath_file(self) -> None:
        from ..inference.qupath import QUPATH_FILE

        start = str(Path(self._last_dir()) / QUPATH_FILE)
        path, _ = QFileDialog.getSaveFileName(self, "Save spots for QuPath", start, "GeoJSON (*.geojson)")
        if path:
            self._remember_dir(Path(path))
            self._guarded(self.save_qupath, path)

    def _guarded(self, func, path) -> None:
        try:
            func(path)
            self.status.setText(f"saved {Path(path).name}")
        except (OSError, StPredictError, ValueError) as exc:
            notify_error(f"could not save {Path(path).name}: {exc}")

    def save_table(self, path: str | Path) -> Path:
        """Spot table: ``.h5ad`` (full prediction) or ``.csv`` (spot centres, confidence, the
        tumour score and call per spot, all genes)."""
        from ..inference.export import save_spot_table
        from ..inference.tumor import add_tumour_columns

        if self.tumor is not None:  # each spot's call as shown, so the table joins the mask
            add_tumour_columns(self.prediction, self.tumor)
        return save_spot_table(self.prediction, path)

    def save_qupath(self, path: str | Path, genes: list[str] | None = None) -> Path:
        """Every spot as a QuPath detection (`napari_stpredict.inference.qupath`), with the
        genes shown in the viewer (or ``genes``) as measurements and the tumour call as shown."""
        from ..inference.qupath import write_qupath_detections
        from ..inference.tumor import add_tumour_columns

        if self.prediction is None:
            raise StPredictError("no prediction yet: run a prediction first")
        if self.tumor is not None:
            add_tumour_columns(self.prediction, self.tumor)
        genes = genes or list(self.analysis.shown_genes) or list(self.prediction.genes[:1])
        threshold = self.tumor.threshold if self.tumor is not None else None
        return write_qupath_detections(self.prediction, genes, path, threshold=threshold)

    def save_geojson(self, path: str | Path) -> Path:
        """Tumour contours as a GeoJSON FeatureCollection (level-0 pixels; QuPath imports it)."""
        from ..inference.export import export_tumor_geojson

        if self.tumor is None:
            raise StPredictError("no tumour mask yet: run a prediction first")
        return export_tumor_geojson(self.prediction, self.tumor, path)
