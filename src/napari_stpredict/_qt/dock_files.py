"""The dock's files: measured spots to compare with (the sample's loaded by itself), and
the exports (spot table, QuPath detections, tumour contours) with their save dialogs.

A mixin of `PredictWidget`.
"""

from __future__ import annotations

from pathlib import Path

from qtpy.QtWidgets import QFileDialog

from ..errors import StPredictError
from .common import notify_error, notify_warning

__all__ = ["FilesMixin"]


class FilesMixin:
    """Measured spots and exports (see `PredictWidget`)."""

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

    def _choose_spatialdata_file(self) -> None:
        from ..inference.spatial_data import SPATIALDATA_FILE, spatialdata_missing

        if missing := spatialdata_missing():  # said before a dialog asks for a path
            notify_error(missing)
            return
        start = str(Path(self._last_dir()) / SPATIALDATA_FILE)
        path, _ = QFileDialog.getSaveFileName(self, "Save as SpatialData", start, "Zarr (*.zarr)")
        if path:
            self._remember_dir(Path(path))
            self._guarded(self.save_spatialdata, path)

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

    def save_spatialdata(self, path: str | Path) -> Path:
        """The slide shown, its spots, predicted expression and tumour contours as a SpatialData
        ``.zarr`` (`napari_stpredict.inference.spatial_data`); an existing store at ``path``
        is replaced once the new one is complete (the save dialog asked)."""
        from ..inference.spatial_data import to_spatialdata, write_spatialdata

        if self.prediction is None or self.analysis is None:
            raise StPredictError("no prediction yet: run a prediction first")
        if self.analysis.layer_name not in self.viewer.layers:
            raise StPredictError(f"the slide layer {self.analysis.layer_name!r} is no longer open")
        slide = self._slide_for_layer(self.viewer.layers[self.analysis.layer_name])
        sdata = to_spatialdata(self.prediction, slide, self.tumor)
        return write_spatialdata(sdata, path, overwrite=True)

    def save_geojson(self, path: str | Path) -> Path:
        """Tumour contours as a GeoJSON FeatureCollection (level-0 pixels; QuPath imports it)."""
        from ..inference.export import export_tumor_geojson

        if self.tumor is None:
            raise StPredictError("no tumour mask yet: run a prediction first")
        return export_tumor_geojson(self.prediction, self.tumor, path)
