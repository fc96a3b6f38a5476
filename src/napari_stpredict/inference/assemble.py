"""The `Prediction` built from the engine's arrays: the spot table and its metadata, in the
layout `napari_stpredict.inference.meta` reads (the one place outside it that writes it).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..grid import GridGeometry
from .prediction import Prediction

__all__ = ["assemble_prediction", "import_output_modules_in_background", "prediction_metadata"]


def prediction_metadata(slide, model, grid, settings, method, slide_adaptation, stride_um, roi, stain, distance):
    """The prediction's metadata in the stored layout (step 6 of `predict_slide`).

    `PredictionMeta.from_uns` reads it; it is written here once, as the engine knows it.
    ``settings`` is what `predict_slide` resolved (top-k, context, adaptation, resolution).
    """
    from .trust import domain_summary, tumor_calibration_meta

    io = model.io
    adapt_mode = settings.adaptation
    return {
        "model": {
            "name": model.source,
            "backbone": model.config.backbone,
            "trained_on": model.provenance.get("train_sections", []),
            "bank_spots": len(model.bank),
            "method": method,
            "top_k": settings.top_k,
            "context_sigma_um": settings.context_sigma_um,
            "adaptation": slide_adaptation.summary()
            if slide_adaptation is not None
            else {"mode": "none", "requested": adapt_mode}
            if adapt_mode != "none"
            else {"mode": "none"},
            "markers": list(model.provenance.get("markers", {}).get("panel", [])),
            "confidence_reference": dict(model.provenance.get("confidence_reference", {})),
        },
        "slide": slide.summary(),
        "mpp_x": slide.mpp_x,
        "mpp_y": slide.mpp_y,
        "patch_um": io.patch_um,
        "input_px": io.input_px,
        "stride_um": float(stride_um if stride_um is not None else io.patch_um),
        **GridGeometry.of(grid.origin, grid.stride, grid.shape).to_meta(),
        "units": "log1p(counts per 10,000)",
        "roi": None if roi is None else np.asarray(roi, float).tolist(),
        "trust": {
            "stain": stain.to_dict(),
            "resolution": settings.resolution,
            "domain": domain_summary(
                distance if model.calibration else None, model.calibration["domain"] if model.calibration else None
            ),
        },
        "tumor_calibration": tumor_calibration_meta(model.calibration),
        "note": "Research use only; not for diagnosis.",
    }


#: What `assemble_prediction` needs and a fresh process has not imported yet (anndata alone
#: takes 1-2 s on 2 cores: on the sample slide a third of the prediction's time).
_OUTPUT_MODULES = ("pandas", "anndata")


def import_output_modules_in_background() -> None:
    """Import the output's modules in a thread while tissue detection and the model run.

    The batches spend their time in torch and the decoders, which release the GIL, so the
    import overlaps with them instead of following them. `assemble_prediction`'s own
    import then waits on Python's per-module import lock if the thread has not finished,
    and raises any import error itself.
    """
    import contextlib
    import importlib
    import sys
    import threading

    if all(name in sys.modules for name in _OUTPUT_MODULES):
        return

    def load() -> None:
        for name in _OUTPUT_MODULES:
            with contextlib.suppress(Exception):  # reported by the import in assemble_prediction
                importlib.import_module(name)

    threading.Thread(target=load, name="stpredict-imports", daemon=True).start()


def assemble_prediction(model, grid, expression, confidence, distance, meta: dict[str, Any]) -> Prediction:
    """The `Prediction` (step 7 of `predict_slide`): AnnData of spots x genes, their
    centres in ``obsm["spatial"]`` (level-0 pixels), ``meta`` in ``uns["stpredict"]``."""
    import anndata as ad
    import pandas as pd

    n = len(grid)
    obs = pd.DataFrame(
        {
            "x": grid.l0_centres[:, 0],
            "y": grid.l0_centres[:, 1],
            "grid_row": grid.rows.astype(np.int32),
            "grid_col": grid.cols.astype(np.int32),
            "confidence": confidence,
            "tissue_fraction": grid.tissue_fraction,
            "domain_distance": distance,
            "out_of_domain": (distance > model.calibration["domain"]["threshold"])
            if model.calibration
            else np.zeros(n, bool),
        },
        index=[f"spot_{i}" for i in range(n)],
    )
    adata = ad.AnnData(X=expression, obs=obs, var=pd.DataFrame(index=pd.Index(model.genes)))
    adata.obsm["spatial"] = grid.l0_centres.copy()
    adata.uns["stpredict"] = meta
    return Prediction(adata)
