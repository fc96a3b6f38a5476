"""The dock's slide choice: which RGB image layers it offers, the one it shows, the
resolution typed for a slide without one, and putting a pixel slide in µm.

A mixin of `PredictWidget` (it uses the dock's panels and state); no Qt widget of its own.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..placement import Placement
from .common import WHOLE_TISSUE, notify_error

__all__ = ["SlidesMixin"]


class SlidesMixin:
    """Choosing the slide layer the dock works on (see `PredictWidget`)."""

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
        recorded = slide.mpp[0] if slide is not None and slide.records_mpp else None
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
