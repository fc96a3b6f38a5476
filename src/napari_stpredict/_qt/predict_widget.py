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
from pathlib import Path

import numpy as np
from qtpy.QtCore import QSettings, Qt
from qtpy.QtWidgets import QCompleter, QFrame, QLabel, QScrollArea, QVBoxLayout, QWidget

from ..analysis import SlideAnalysis
from ..placement import Placement
from .common import canvas_caption, notify_error, notify_warning
from .dock_files import FilesMixin
from .dock_run import RunMixin
from .dock_slides import SlidesMixin
from .panels import ExportPanel, GenesPanel, MeasuredPanel, RunPanel, TumourPanel
from .slide_layers import SlideLayers

__all__ = ["PredictWidget", "canvas_caption"]


class PredictWidget(SlidesMixin, RunMixin, FilesMixin, QWidget):
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
        self.export_panel.save_spatialdata_button.clicked.connect(self._choose_spatialdata_file)
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

    def _last_dir(self) -> str:
        return str(self._settings.value("last_dir", str(Path.home())))

    def _remember_dir(self, path: Path) -> None:
        self._settings.setValue("last_dir", str(Path(path).parent))

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
