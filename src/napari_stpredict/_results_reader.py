"""npe2 reader contribution: a prediction folder (or its ``prediction.h5ad``) back as layers.

Dropping ``her2st_C2/`` (a folder ``stpredict predict`` or the cohort wrote) or its
``prediction.h5ad`` onto napari, beside the slide opened by this plugin's reader, restores
the gene maps written with it, the confidence map and the tumour mask and contour, at the
threshold and markers the run used (``config.yaml``), without running the model. The layers
take the frame this plugin's reader gives the slide (µm when its resolution is known), so
they lie on it; a slide opened by napari's own reader (pixels) takes "Put this slide in µm"
first. As with every reader, `napari_get_reader` never raises: anything else is None.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["napari_get_prediction_reader", "read_prediction_layers"]

PREDICTION_FILE = "prediction.h5ad"


def _prediction_file(path: Path) -> Path | None:
    from .io.output_folder import MARKER

    if path.is_dir():
        candidate = path / PREDICTION_FILE
        return candidate if (path / MARKER).is_file() and candidate.is_file() else None
    if path.name == PREDICTION_FILE and path.is_file():
        return path
    return None


def napari_get_prediction_reader(path: str | list[str]):
    """A reader for a prediction folder or ``prediction.h5ad``, or None."""
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    try:
        found = _prediction_file(Path(path))
    except (TypeError, OSError):
        return None
    return read_prediction_layers if found is not None else None


def read_prediction_layers(path: str | list[str]) -> list[tuple[Any, dict, str]]:
    """The layers of a saved prediction: its gene maps, confidence, tumour mask and contour.

    Raises
    ------
    StPredictError
        Naming the file, when it is not a readable napari-stpredict prediction.
    """
    import yaml

    from .errors import StPredictError
    from .inference.prediction import Prediction
    from .inference.tumor import tumor_mask
    from .layers import confidence_layer, heatmap_layer, tumor_contour_layer, tumor_labels_layer

    path = Path(path[0] if isinstance(path, (list, tuple)) else path)
    file = _prediction_file(path)
    if file is None:
        raise StPredictError(f"{path}: not a napari-stpredict prediction folder or {PREDICTION_FILE}")
    try:
        prediction = Prediction.load(file)
    except Exception as exc:  # noqa: BLE001 - anndata/h5py raise many kinds for a damaged file
        raise StPredictError(f"{file}: not a readable napari-stpredict prediction ({exc})") from exc
    config: dict[str, Any] = {}
    config_file = file.parent / "config.yaml"
    if config_file.is_file():
        try:
            config = yaml.safe_load(config_file.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError, UnicodeDecodeError):
            config = {}
    genes = [g for g in (config.get("genes") or []) if g in prediction.genes] or (
        ["ERBB2"] if "ERBB2" in prediction.genes else list(prediction.genes[:1])
    )
    layers = [confidence_layer(prediction)]
    for i, gene in enumerate(genes):
        data, kwargs, kind = heatmap_layer(prediction, gene)
        kwargs["visible"] = i == 0  # one map on screen; the others a click away
        layers.append((data, kwargs, kind))
    threshold = config.get("threshold")
    mode = config.get("threshold_mode") or "auto"
    try:
        mask = tumor_mask(prediction, config.get("markers") or None, threshold=threshold, mode=mode)
    except ValueError:
        mask = None
    if mask is not None:
        layers.append(tumor_labels_layer(prediction, mask))
        layers.append(tumor_contour_layer(prediction, mask))
    for _, kwargs, _ in layers:  # named after the saved run, apart from a rerun's layers
        kwargs["name"] = f"{kwargs['name']} [{file.parent.name}, saved]"
    return layers
