"""The dock's Run: the model chosen, the slide and region read on the GUI thread, the
prediction in a napari worker thread with progress and a Cancel that answers within a
second, and its result handed back to the GUI thread.

The worker touches no dock state: it yields progress (and the model it loaded, which the
GUI thread keeps for the next run) and returns the `Prediction`. A mixin of `PredictWidget`.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
from qtpy.QtWidgets import QFileDialog

from ..errors import StPredictError
from ..placement import Placement
from .common import BUNDLED, FROM_FILE, WHOLE_TISSUE, notify_error

__all__ = ["RunMixin", "PROGRESS_INTERVAL_S"]

PROGRESS_INTERVAL_S = 0.3  # between redraws of the progress bars while spots are predicted


class RunMixin:
    """Running the model on the chosen slide (see `PredictWidget`)."""

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

    def _slide_for_layer(self, layer):
        """The slide to predict for a layer, with the resolution typed in the dock where the
        file records none (or, for an image in memory, always)."""
        from .._reader import slide_of_layer
        from ..io.base import ArraySlide

        slide = slide_of_layer(layer)
        mpp = self.mpp_spin.value() or None
        if slide is not None:
            if not slide.records_mpp:
                if mpp is None:
                    raise StPredictError(
                        f"{slide.name}: the slide does not record its resolution; enter it "
                        "(µm per pixel) in the Resolution field"
                    )
                slide.use_typed_mpp(mpp)  # the value typed now, also on a rerun
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
        slide.use_typed_mpp(mpp)  # the resolution typed now
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
        model = self.model if self._model_key == _model_key(model_path, device) else None
        self.worker = create_worker(
            predict_in_worker, slide, params, model_path, device, model, _start_thread=False, _ignore_errors=True
        )
        self.worker.yielded.connect(self._on_progress)
        self.worker.returned.connect(self._on_result)
        self.worker.errored.connect(self._on_error)
        self.worker.finished.connect(self._on_finished)
        self.run_panel.set_running(True)
        self._last_stage = None
        self.status.setText("starting...")
        self.worker.start()

    def cancel(self) -> None:
        """Stop the running prediction between batches; nothing is added or written."""
        self._cancel.set()
        if self.worker is not None:
            self.worker.quit()
        self.status.setText("cancelling...")

    def _on_progress(self, progress: dict) -> None:
        if progress.get("stage") == "model loaded":
            # On the GUI thread: the next run on the same checkpoint and device reuses it,
            # even after this one is cancelled.
            self.model, self._model_key = progress["model"], progress["key"]
            return
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


def _model_key(path: Path, device: str) -> str:
    return f"{path}|{device}"


def predict_in_worker(slide, params: dict, path: Path, device: str, model=None):
    """Runs in the worker thread: load the model unless given, then predict with the cache.

    Yields progress dicts (one ``"model loaded"`` event carrying the model, for the GUI
    thread to keep) and returns the `Prediction`; it writes nothing of the dock.
    """
    from ..inference.cache import cached_predict_slide
    from ..model import load_model

    if model is None:
        yield {"stage": "model", "done": 0, "total": 0, "message": f"loading model {path.name}"}
        model = load_model(path, device=device)
        yield {"stage": "model loaded", "model": model, "key": _model_key(path, device)}
    prediction = yield from cached_predict_slide(slide, model, model_path=path, **params)
    return prediction
