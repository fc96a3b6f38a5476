"""`predict_slide`: tile a slide's tissue, run the model in batches, return a `Prediction`.

Patches are read by worker threads a few batches ahead of the model, so reading
overlaps with compute (`napari_stpredict.inference.batches`). Memory stays bounded:
only the batches in flight are held, plus the output (spots x genes float32:
about 3.2 KB per spot for 800 genes; a 20 x 15 mm section at the smallest stride
allowed, 1/8 of a 112 µm patch, has ~1.5 million spots, ~5 GB; at the default stride
~24,000 spots, 77 MB).

`predict_slide` runs named steps, each a function below: `_check_inputs` (every argument,
before slow work), `_stain_and_tissue`, `_spot_grid`, the optional per-slide adaptation,
`predict_spots` (the batches, `inference/batches.py`), `_smooth` (spatial context), then
`napari_stpredict.inference.assemble` builds the `Prediction`.
"""

from __future__ import annotations

import contextlib
import threading
import time
import weakref
from collections.abc import Generator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import PredictionCancelled, StPredictError  # noqa: F401 - re-exported
from .assemble import assemble_prediction, import_output_modules_in_background, prediction_metadata
from .batches import predict_spots
from .prediction import Prediction

__all__ = ["predict_slide", "run_prediction", "PredictionCancelled"]

# Per open slide: (thumbnail size, dimensions, mpp) -> its stain verdict and tissue mask.
_PREPARED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _cancellable(func, cancel_event: threading.Event | None, name: str, *args, **kwargs):
    """Run a single long call (tissue detection, the stain check) so that a cancel answers
    within a tenth of a second: the call runs in a helper thread, and a cancel leaves it
    to finish on its own while the prediction stops at once."""
    if cancel_event is None:
        return func(*args, **kwargs)
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stpredict-step")
    try:
        future = pool.submit(func, *args, **kwargs)
        while True:
            try:
                return future.result(timeout=0.1)
            except FuturesTimeout:
                if cancel_event.is_set():
                    raise PredictionCancelled(f"{name}: prediction cancelled before any spot was predicted") from None
    finally:
        pool.shutdown(wait=False)


def _tissue_thumbnail_size(slide, patch_um: float) -> int:
    """Thumbnail size giving ~8 thumbnail pixels per patch width (1,024 to 4,096 px)."""
    width, height = slide.dimensions
    longest_um = max(width * slide.mpp_x, height * slide.mpp_y)
    return int(np.clip(longest_um / (patch_um / 8), 1024, 4096))


def predict_slide(
    slide,
    model,
    *,
    stride_um: float | None = None,
    roi=None,
    batch_size: int = 64,
    method: str = "retrieval",
    top_k: int | None = None,
    context_sigma_um: float | None = None,
    adaptation: str | None = None,
    num_workers: int | None = None,
    prefetch_batches: int = 3,
    check_stain: bool = True,
    cancel_event: threading.Event | None = None,
) -> Generator[dict[str, Any], None, Prediction]:
    """Predict expression over a slide's tissue; a generator that yields progress.

    Parameters
    ----------
    slide : Slide
        An open slide with a known mpp.
    model : STModel
        From `napari_stpredict.model.load_model`; its device is used.
    stride_um : float, optional
        Distance between spot centres (default: the model's patch size).
    roi : optional
        Predict only inside a box ``(x0, y0, x1, y1)`` or polygon(s) in level-0 pixels.
    batch_size : int
        Patches per model call.
    method : {"retrieval", "ridge"}
        Predictor (see `STModel.predict_embeddings`).
    top_k : int, optional
        Reference spots averaged by the retrieval (default: the model's, which it was
        evaluated with).
    context_sigma_um : float, optional
        Spatial context: each spot's prediction averaged with its 8 neighbouring
        patches' (one patch width away at any stride; Gaussian weights of this width in
        µm; `napari_stpredict.inference.context`). Default: the model's; 0 = none. Only
        predicted cells count as neighbours (tissue, inside ``roi``).
    adaptation : {"none", "centre", "standardise"}, optional
        Per-slide adaptation of the image features before retrieval
        (`napari_stpredict.model.adaptation`), estimated on an even sample of the whole
        tissue (also when ``roi`` is given). Default: the model's; "none" turns it off.
        The out-of-domain score is always measured on the raw features.
    num_workers : int, optional
        Threads reading patches (default: 2 on the CPU, one per core up to 8 on a GPU;
        `napari_stpredict.model.precision.read_threads_for`).
    check_stain : bool
        Refuse slides that do not look like brightfield H&E (`napari_stpredict.stain`)
        before any slow work; False predicts anyway and records the verdict.
    cancel_event : threading.Event, optional
        Set it to stop between batches (closing the generator works too).

    Yields
    ------
    dict
        ``{"stage": "stain" | "tissue" | "predict", "done": int, "total": int, ...}``.

    Returns
    -------
    Prediction
        Via ``StopIteration.value``; `run_prediction` returns it directly.

    Raises
    ------
    PredictionCancelled
        When ``cancel_event`` is set.
    StainCheckError
        When ``check_stain`` and the slide is not H&E (fluorescence, IHC, grayscale,
        blank, ...), before tissue detection.
    """
    if num_workers is None:
        from ..model.precision import read_threads_for

        num_workers = read_threads_for(model.device)
    settings = _check_inputs(
        slide, model, stride_um, roi, batch_size, num_workers, prefetch_batches, top_k, context_sigma_um, adaptation
    )
    t_start = time.perf_counter()
    import_output_modules_in_background()
    stain, tissue = yield from _stain_and_tissue(slide, model.io.patch_um, check_stain, cancel_event)
    grid = _spot_grid(slide, tissue, roi, model.io.patch_um, stride_um)
    slide_adaptation = None
    if settings.adaptation != "none" and model.training_feature_stats is not None:
        yield {"stage": "adapt", "done": 0, "total": 0, "message": "adapting to the slide"}
        slide_adaptation = _estimate_slide_adaptation(
            slide, model, tissue, settings.adaptation, batch_size, cancel_event
        )
    expression, confidence, distance = yield from predict_spots(
        slide,
        model,
        grid,
        method,
        settings.top_k,
        slide_adaptation,
        batch_size,
        num_workers,
        prefetch_batches,
        cancel_event,
    )
    _smooth(expression, grid, settings.context_weights)
    meta = prediction_metadata(slide, model, grid, settings, method, slide_adaptation, stride_um, roi, stain, distance)
    meta["seconds"] = round(time.perf_counter() - t_start, 2)
    return assemble_prediction(model, grid, expression, confidence, distance, meta)


@dataclass(frozen=True)
class _RunSettings:
    """What `predict_slide` resolved from its arguments and the model's defaults."""

    top_k: int
    context_sigma_um: float
    context_weights: np.ndarray
    adaptation: str
    resolution: dict[str, Any]


def _check_inputs(
    slide, model, stride_um, roi, batch_size, num_workers, prefetch_batches, top_k, context_sigma_um, adaptation
) -> _RunSettings:
    """Step 1: every argument checked and resolved against the model, before any slow work."""
    from ..model.adaptation import ADAPTATION_MODES
    from .context import neighbour_weights

    if slide.mpp_x is None or slide.mpp_y is None:
        from ..errors import SlideFormatError

        raise SlideFormatError(
            f"{slide.name}: the slide does not record its resolution; give its mpp "
            "(--mpp, or the mpp field in the widget)"
        )
    io = model.io
    _check_run_arguments(slide, io.patch_um, stride_um, roi, batch_size, num_workers, prefetch_batches)
    top_k = model.retrieval.top_k if top_k is None else int(top_k)
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    sigma = model.retrieval.context_sigma_um if context_sigma_um is None else float(context_sigma_um)
    context_weights = neighbour_weights(sigma, io.patch_um)  # checks sigma before any slow work
    adapt_mode = model.retrieval.adaptation if adaptation is None else adaptation
    if adapt_mode not in ADAPTATION_MODES:
        raise ValueError(f"adaptation must be one of {', '.join(ADAPTATION_MODES)}, got {adapt_mode!r}")
    width_um, height_um = slide.dimensions[0] * slide.mpp_x, slide.dimensions[1] * slide.mpp_y
    if min(width_um, height_um) < io.patch_um:
        from ..errors import TissueMaskError

        raise TissueMaskError(
            f"{slide.name}: the image is {width_um:,.0f} x {height_um:,.0f} µm, smaller than one "
            f"{io.patch_um:g} µm patch of the model; check its resolution (mpp {slide.mpp_x:g})"
        )
    return _RunSettings(top_k, sigma, context_weights, adapt_mode, _resolution_check(slide.mpp_x, io.mpp))


def _stain_and_tissue(slide, patch_um: float, check_stain: bool, cancel_event):
    """Step 2 (a generator of progress): the stain verdict and the tissue mask, from one
    thumbnail, remembered per open slide (a rerun in the widget skips them)."""
    from ..stain import StainCheckError
    from ..stain import check_stain as assess_stain  # the parameter check_stain is the on/off switch
    from ..tissue import slide_tissue_mask

    yield {"stage": "stain", "done": 0, "total": 0, "message": "checking the stain"}
    # One thumbnail serves the stain check and tissue detection (reading it is the slow part
    # on a slide without a pyramid).
    thumb_size = _tissue_thumbnail_size(slide, patch_um)
    key = (thumb_size, tuple(slide.dimensions), slide.mpp_x, slide.mpp_y)
    prepared = _PREPARED.get(slide)
    if prepared is not None and prepared[0] == key:
        # The same open slide again (a rerun in the widget, another stride or region):
        # its stain verdict and tissue mask do not change; detection can take seconds.
        _, stain, tissue = prepared
        thumbnail = None
    else:
        thumbnail = _cancellable(slide.thumbnail, cancel_event, slide.name, thumb_size)
        stain, tissue = assess_stain(thumbnail), None
    # A blank image is left to tissue detection, whose message also says what to do.
    if check_stain and not stain.ok and stain.kind != "blank":
        raise StainCheckError(
            f"{slide.name}: not an H&E slide: {stain.message} (to predict anyway: "
            "--no-stain-check, or untick 'Check stain' in the widget)"
        )
    yield {"stage": "tissue", "done": 0, "total": 0, "message": "detecting tissue"}
    if tissue is None:
        tissue = _cancellable(
            slide_tissue_mask,
            cancel_event,
            slide.name,
            slide,
            max_size=thumb_size,
            require_tissue=False,
            thumbnail=thumbnail,
        )
        with contextlib.suppress(TypeError):  # a slide type that cannot be weakly referenced: no memo
            _PREPARED[slide] = (key, stain, tissue)
    return stain, tissue


def _spot_grid(slide, tissue, roi, patch_um: float, stride_um):
    """Step 3: the spots: grid cells at least half tissue (inside ``roi`` if given)."""
    from ..errors import TissueMaskError
    from ..tiling import roi_mask, spot_grid
    from ..tissue import check_has_tissue

    if roi is None:
        check_has_tissue(tissue, slide.name)
    mask = tissue.mask
    if roi is not None:
        mask = mask & roi_mask(mask.shape, tissue.l0_per_th, roi)
    grid = spot_grid(mask, tissue.l0_per_th, slide.mpp, patch_um=patch_um, stride_um=stride_um, slide_name=slide.name)
    if len(grid) == 0:
        raise TissueMaskError(f"{slide.name}: no patch of {patch_um:g} µm is at least half tissue")
    return grid


def _smooth(expression: np.ndarray, grid, context_weights: np.ndarray) -> None:
    """Step 5: the spatial context, in place (`napari_stpredict.inference.context`)."""
    from .context import smooth_on_grid

    # Neighbours one patch width away: every k-th cell at a stride of 1/k patch width.
    cells_per_patch = (
        max(1, round(grid.patch_l0[0] / grid.stride[0])),
        max(1, round(grid.patch_l0[1] / grid.stride[1])),
    )
    smooth_on_grid(expression, grid.rows, grid.cols, grid.shape, cells_per_patch, context_weights)


def _check_run_arguments(slide, patch_um, stride_um, roi, batch_size, num_workers, prefetch_batches) -> None:
    """Every numeric argument of `predict_slide` checked as the CLI checks its options,
    before any slow work (a zero prefetch would return a map of uninitialised memory)."""
    from ..tiling import roi_polygons

    for name, value in (
        ("batch_size", batch_size),
        ("num_workers", num_workers),
        ("prefetch_batches", prefetch_batches),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a whole number of at least 1, got {value!r}")
    if stride_um is not None:
        smallest = patch_um / 8
        if isinstance(stride_um, bool) or not (isinstance(stride_um, (int, float)) and np.isfinite(stride_um)):
            raise ValueError(f"stride_um must be a finite number of µm, got {stride_um!r}")
        if stride_um < smallest:
            raise ValueError(f"stride_um must be at least {smallest:g} µm (1/8 of the model's patch), got {stride_um}")
        longest = max(slide.dimensions[0] * slide.mpp_x, slide.dimensions[1] * slide.mpp_y)
        if stride_um > longest:
            raise ValueError(
                f"stride_um {stride_um:g} µm is longer than {slide.name} itself ({longest:,.0f} µm): no two spots fit"
            )
    if roi is not None:
        roi_polygons(roi)


#: Tissue patches the slide's feature statistics are measured on (evenly spread over the
#: whole tissue): enough for stable means, a small cost next to a slide's prediction.
ADAPTATION_SAMPLE = 256


def _estimate_slide_adaptation(slide, model, tissue, mode: str, batch_size: int, cancel_event):
    """The slide's `SlideAdaptation` from an even sample of patches over all its tissue
    (never only a region of interest, which may be all tumour); None when the tissue has
    too few patches."""
    from ..io.patches import read_patches
    from ..model.adaptation import even_sample
    from ..tiling import spot_grid

    io = model.io
    whole = spot_grid(tissue.mask, tissue.l0_per_th, slide.mpp, patch_um=io.patch_um, slide_name=slide.name)
    centres = whole.l0_centres[even_sample(len(whole), ADAPTATION_SAMPLE)]
    features = []
    for start in range(0, len(centres), batch_size):
        if cancel_event is not None and cancel_event.is_set():
            raise PredictionCancelled(f"{slide.name}: prediction cancelled while adapting to the slide")
        patches = read_patches(slide, centres[start : start + batch_size], io.patch_um, io.input_px)
        features.append(model.embed_with_features(patches)[1])
    if not features:
        return None
    import torch

    return model.slide_adaptation(torch.cat(features), mode=mode)


def _resolution_check(slide_mpp: float, model_mpp: float) -> dict[str, Any]:
    """Whether the slide is sharp enough for the model: patches of a slide scanned much
    coarser than the model reads them are upsampled and lack the detail it learnt from."""
    coarse = slide_mpp > 1.5 * model_mpp
    message = (
        f"the slide's finest resolution is {slide_mpp:.2f} µm/px, coarser than the {model_mpp:.2f} µm/px the "
        "model reads patches at: they are upsampled and blurrier than what it was trained on, so expect "
        "less accurate maps"
        if coarse
        else ""
    )
    return {
        "slide_mpp": round(float(slide_mpp), 4),
        "model_mpp": round(float(model_mpp), 4),
        "coarse": coarse,
        "message": message,
    }


def run_prediction(slide, model, **kwargs) -> Prediction:
    """Run `predict_slide` to the end (no progress) and return the `Prediction`."""
    from .._progress import drain

    return drain(predict_slide(slide, model, **kwargs))
