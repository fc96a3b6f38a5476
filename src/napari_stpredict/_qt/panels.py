"""The dock's panels: widgets and their own display logic, no analysis and no layers.

`PredictWidget` composes them, connects their signals to what they ask for, and keeps
the slide analyses; each panel only gathers inputs and shows what it is given.
"""

from __future__ import annotations

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QSlider,
    QVBoxLayout,
    QWidget,
)

from .common import (
    BUNDLED,
    COLOURS_FIXED,
    COLOURS_SLIDE,
    DISCLAIMER,
    FROM_FILE,
    GENE_ROLE,
    MODE_ABSOLUTE,
    MODE_SLIDE,
    SORT_ACCURACY,
    SORT_NAME,
)

__all__ = ["RunPanel", "GenesPanel", "TumourPanel", "MeasuredPanel", "ExportPanel"]


class RunPanel(QWidget):
    """Slide, resolution, model, device, stride, region, stain check; run and cancel;
    progress, status, the readout under the cursor and the trust banner."""

    def __init__(self, devices: list[str]) -> None:
        super().__init__()
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(QLabel(f"<b>{DISCLAIMER}</b>"))
        self.model_info = QLabel("")
        self.model_info.setWordWrap(True)
        layout.addWidget(self.model_info)

        form = QFormLayout()
        self.slide_combo = QComboBox()
        form.addRow("Slide layer", self.slide_combo)
        self.mpp_spin = QDoubleSpinBox()
        self.mpp_spin.setRange(0.0, 50.0)
        self.mpp_spin.setDecimals(4)
        self.mpp_spin.setSuffix(" µm/px")
        self.mpp_spin.setToolTip("Resolution of the slide layer; needed when the file does not record it")
        form.addRow("Resolution", self.mpp_spin)
        self.to_um_button = QPushButton("Put this slide in µm")
        self.to_um_button.setToolTip(
            "The layer is in pixels (napari's own reader): give it the resolution above so that it and "
            "its maps share one physical frame with slides opened in µm"
        )
        self.to_um_button.setEnabled(False)
        form.addRow("", self.to_um_button)
        self.model_combo = QComboBox()
        self.model_combo.addItems([BUNDLED, FROM_FILE])
        form.addRow("Model", self.model_combo)
        self.device_combo = QComboBox()
        self.device_combo.addItems(devices)
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
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
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

    def set_running(self, running: bool) -> None:
        """Run and Cancel buttons for a prediction that runs (or not)."""
        self.run_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)

    def show_progress(self, progress: dict) -> None:
        """Progress bar and status line from one of the engine's progress dicts."""
        total, done = progress.get("total", 0), progress.get("done", 0)
        self.progress_bar.setRange(0, max(total, 1) if total else 0)
        self.progress_bar.setValue(done)
        if progress.get("stage") == "predict":
            self.status.setText(f"predicting: {done} / {total} spots")
        else:
            self.status.setText(progress.get("message", progress.get("stage", "")))

    def show_trust(self, lines: list[str], verdict: str) -> None:
        """The banner: out-of-domain verdict and stain warnings, coloured by severity."""
        colour = {"out of domain": "#b00020", "partly out of domain": "#b35900"}.get(verdict, "#7a5c00")
        if lines:
            self.trust_banner.setText("<br>".join(f"⚠ {line}" for line in lines))
            self.trust_banner.setStyleSheet(
                f"background-color: {colour}; color: white; padding: 6px; border-radius: 4px;"
            )
        else:
            self.trust_banner.setText("")
        self.trust_banner.setVisible(bool(lines))


class GenesPanel(QGroupBox):
    """Gene search, list (A-Z or best held-out r first, r beside each gene), colour range,
    presets, "show selected" and "side by side"."""

    def __init__(self) -> None:
        super().__init__("Genes")
        g = QVBoxLayout(self)
        self.gene_search = QLineEdit()
        self.gene_search.setPlaceholderText("type to search genes...")
        self.gene_search.textChanged.connect(self.filter)
        g.addWidget(self.gene_search)
        self.gene_sort = QComboBox()
        self.gene_sort.addItems([SORT_NAME, SORT_ACCURACY])
        self.gene_sort.setToolTip(
            "Held-out r: how well the model predicted each gene on patients it never saw "
            "(its shipped evaluation); trust maps of well-predicted genes more"
        )
        self.colour_range = QComboBox()
        self.colour_range.addItems([COLOURS_FIXED, COLOURS_SLIDE])
        self.colour_range.setToolTip(
            "Training range: each gene's colours span its range over the model's training "
            "spots, the same on every slide (comparable). This slide: its own 2nd-98th "
            "percentile (more contrast, not comparable)"
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
        self.show_genes_button = QPushButton("Show selected genes")
        self.side_by_side_button = QPushButton("Side by side")
        self.side_by_side_button.setCheckable(True)
        self.side_by_side_button.setToolTip(
            "Two selected genes next to each other, each over the slide (napari's grid view); press again to go back"
        )
        row.addWidget(self.preset_combo)
        row.addWidget(self.show_genes_button)
        g.addLayout(row)
        g.addWidget(self.side_by_side_button)
        self.show_out_of_domain = QCheckBox("Show out-of-domain spots")
        self.show_out_of_domain.setToolTip(
            "Tissue unlike the model's training data is left blank in the maps (a whole slide out of "
            "domain: the whole map): the model cannot judge it. Tick to draw it anyway"
        )
        g.addWidget(self.show_out_of_domain)

    @property
    def fixed_colours(self) -> bool:
        """Whether colours span the model's training range (comparable between slides)."""
        return self.colour_range.currentText() == COLOURS_FIXED

    def fill(self, genes: list[str], accuracy: dict[str, float | None]) -> None:
        """List ``genes`` sorted as chosen, each with its held-out r; keeps the selection."""
        genes = sorted(genes, key=str.upper)
        if self.gene_sort.currentText() == SORT_ACCURACY:
            genes.sort(key=lambda g: -accuracy[g] if accuracy.get(g) is not None else float("inf"))
        selected = set(self.selected())
        self.gene_list.clear()
        for gene in genes:
            r = accuracy.get(gene)
            item = QListWidgetItem(f"{gene:<10}  r {r:.2f}" if r is not None else gene)
            item.setData(GENE_ROLE, gene)
            self.gene_list.addItem(item)
            item.setSelected(gene in selected)

    def selected(self) -> list[str]:
        return [item.data(GENE_ROLE) for item in self.gene_list.selectedItems()]

    def select(self, genes: list[str]) -> None:
        """Select exactly ``genes`` in the list."""
        self.gene_list.clearSelection()
        for i in range(self.gene_list.count()):
            if self.gene_list.item(i).data(GENE_ROLE) in genes:
                self.gene_list.item(i).setSelected(True)

    def filter(self, text: str) -> None:
        """Show only the genes whose name contains ``text``."""
        text = text.strip().upper()
        for i in range(self.gene_list.count()):
            item = self.gene_list.item(i)
            item.setHidden(bool(text) and text not in item.data(GENE_ROLE).upper())

    def typed_gene(self) -> str | None:
        """The gene whose whole name is typed in the search field (selected), or None."""
        text = self.gene_search.text().strip().upper()
        for i in range(self.gene_list.count()):
            item = self.gene_list.item(i)
            if item.data(GENE_ROLE).upper() == text:
                item.setSelected(True)
                return item.data(GENE_ROLE)
        return None

    def set_side_by_side_checked(self, checked: bool) -> None:
        """Set the button without asking for the grid view again."""
        self.side_by_side_button.blockSignals(True)
        self.side_by_side_button.setChecked(checked)
        self.side_by_side_button.blockSignals(False)


class TumourPanel(QGroupBox):
    """Marker genes, score units, the threshold slider with its value and Auto."""

    def __init__(self) -> None:
        super().__init__("Tumour")
        t = QFormLayout(self)
        self.markers_edit = QLineEdit()
        self.markers_edit.setToolTip("Marker genes, separated by commas; the score is their mean z-score")
        t.addRow("Markers", self.markers_edit)
        self.threshold_mode = QComboBox()
        self.threshold_mode.addItems([MODE_ABSOLUTE, MODE_SLIDE])
        self.threshold_mode.setToolTip(
            "Calibrated: scores in the units of the model's training spots and the "
            "threshold chosen on them (comparable between slides; a slide without "
            "tumour gets little or none). Per slide: this slide's own scores and an "
            "automatic threshold, which always splits the slide in two."
        )
        t.addRow("Units", self.threshold_mode)
        slider_row = QHBoxLayout()
        self.threshold_slider = QSlider(Qt.Horizontal)
        self.threshold_slider.setRange(0, 1000)
        self.threshold_label = QLabel("-")
        self.auto_button = QPushButton("Auto")
        slider_row.addWidget(self.threshold_slider)
        slider_row.addWidget(self.threshold_label)
        slider_row.addWidget(self.auto_button)
        t.addRow("Threshold", slider_row)
        self._score_range: tuple[float, float] | None = None

    @property
    def mode(self) -> str:
        """``"slide"`` (per-slide units, automatic threshold) or ``"auto"`` (calibrated)."""
        return "slide" if self.threshold_mode.currentText() == MODE_SLIDE else "auto"

    def markers(self) -> list[str]:
        return [m.strip() for m in self.markers_edit.text().replace(";", ",").split(",") if m.strip()]

    def show_mask(self, mask, *, automatic: bool) -> None:
        """Value and share of the mask; an automatic threshold also resets the slider's range."""
        if automatic:
            lo = min(float(mask.score.min()), mask.threshold)
            hi = max(float(mask.score.max()), mask.threshold)
            self._score_range = (lo, hi)
            self.threshold_slider.blockSignals(True)
            self.threshold_slider.setValue(self.position_of(mask.threshold))
            self.threshold_slider.blockSignals(False)
        self.threshold_label.setText(
            f"{mask.threshold:.2f} ({'auto' if mask.automatic else 'manual'}, {mask.fraction:.0%})"
        )
        self.threshold_label.setToolTip(mask.describe() + (f"; {mask.note}" if mask.note else ""))

    def position_of(self, threshold: float) -> int:
        lo, hi = self._score_range
        return int(round((threshold - lo) / max(hi - lo, 1e-9) * 1000))

    def threshold_at(self, position: int) -> float | None:
        """The threshold a slider position stands for (None before the first mask)."""
        if self._score_range is None:
            return None
        lo, hi = self._score_range
        return lo + (hi - lo) * position / 1000


class MeasuredPanel(QGroupBox):
    """Load measured spots; the predicted-vs-measured r."""

    def __init__(self) -> None:
        super().__init__("Measured spots (optional)")
        m = QVBoxLayout(self)
        self.load_spots_button = QPushButton("Load measured spots (.h5ad)...")
        self.r_label = QLabel("")
        self.r_label.setWordWrap(True)
        m.addWidget(self.load_spots_button)
        m.addWidget(self.r_label)


class ExportPanel(QGroupBox):
    """Save the spot table, the tumour contours, the spots as QuPath detections and the
    whole prediction as SpatialData."""

    def __init__(self) -> None:
        super().__init__("Export")
        e = QHBoxLayout(self)
        self.save_table_button = QPushButton("Spot table...")
        self.save_geojson_button = QPushButton("Tumour GeoJSON...")
        self.save_qupath_button = QPushButton("QuPath spots...")
        self.save_qupath_button.setToolTip(
            "Every spot as a QuPath detection with the shown genes, confidence and tumour score as "
            "measurements (QuPath: File > Import objects, then Measure > Show measurement maps)"
        )
        self.save_spatialdata_button = QPushButton("SpatialData...")
        self.save_spatialdata_button.setToolTip(
            "The slide image, the spots, the predicted expression and the tumour contours as a "
            "SpatialData .zarr (scverse, napari-spatialdata; needs napari-stpredict[spatialdata])"
        )
        e.addWidget(self.save_table_button)
        e.addWidget(self.save_geojson_button)
        e.addWidget(self.save_qupath_button)
        e.addWidget(self.save_spatialdata_button)
