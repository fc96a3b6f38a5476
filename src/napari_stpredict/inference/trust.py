"""Slide-level trust verdicts a user sees: stain check and out-of-domain share.

The numbers come from the model's calibration (`napari_stpredict.training.calibration`);
this module turns per-spot distances into a verdict and a message, the same for the
CLI, the widget, the overview image and the saved prediction.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .meta import PredictionMeta

__all__ = ["domain_summary", "tumor_calibration_meta", "trust_lines", "VERDICTS"]

VERDICTS = ("in domain", "partly out of domain", "out of domain", "unknown")


def domain_summary(distance: np.ndarray | None, calibration: dict[str, Any] | None) -> dict[str, Any]:
    """The slide's out-of-domain verdict from per-spot distances.

    Parameters
    ----------
    distance : numpy.ndarray or None
        Per-spot out-of-domain distance (`STModel.domain_distance`).
    calibration : dict or None
        ``model.calibration["domain"]``.

    Returns
    -------
    dict
        ``verdict`` (one of `VERDICTS`), ``share_out`` (share of spots above the
        threshold), ``threshold``, ``message`` (for the user) and the cut-offs used.
    """
    if calibration is None or distance is None:
        return {
            "verdict": "unknown",
            "share_out": None,
            "threshold": None,
            "message": "this model carries no out-of-domain calibration, so nothing tells whether this slide "
            "resembles its training data (recalibrate it: stpredict train --calibrate MODEL)",
        }
    threshold = float(calibration["threshold"])
    share = float(np.mean(np.asarray(distance) > threshold)) if len(distance) else 0.0
    held_out = calibration.get("held_out_share") or {}
    typical = max(held_out.values()) if held_out else calibration.get("quantile", 0.99)
    partly, out = float(calibration["partly_share"]), float(calibration["out_share"])
    if share >= out:
        verdict = "out of domain"
        message = (
            f"OUT OF DOMAIN: {share:.0%} of the tissue is unlike anything the model was trained on "
            f"(sections held out of training: at most {typical:.0%}). The maps of this slide are not "
            "meaningful; the model knows HER2-positive breast cancer H&E only."
        )
    elif share >= partly:
        verdict = "partly out of domain"
        message = (
            f"PARTLY OUT OF DOMAIN: {share:.0%} of the tissue is unlike the training data (held-out "
            f"sections: at most {typical:.0%}); those spots are marked and never called tumour. Trust "
            "the maps only where the tissue is in domain."
        )
    else:
        verdict = "in domain"
        message = (
            f"in domain: {share:.0%} of the tissue is unlike the training data (held-out sections: at "
            f"most {typical:.0%})."
        )
    return {
        "verdict": verdict,
        "share_out": round(share, 4),
        "threshold": threshold,
        "partly_share": partly,
        "out_share": out,
        "message": message,
    }


def tumor_calibration_meta(calibration: dict[str, Any] | None) -> dict[str, Any] | None:
    """The tumour part of a model's calibration as plain values for ``Prediction.meta``."""
    if calibration is None:
        return None
    tumor = calibration["tumor"]
    out = {k: v for k, v in tumor.items() if k not in ("gene_mean", "gene_std")}
    out["gene_mean"] = [round(float(v), 5) for v in np.asarray(tumor["gene_mean"].cpu(), np.float32)]
    out["gene_std"] = [round(float(v), 5) for v in np.asarray(tumor["gene_std"].cpu(), np.float32)]
    return out


def trust_lines(meta: PredictionMeta) -> list[str]:
    """What a user must be told about a prediction, one line each (empty when all is well).

    Parameters
    ----------
    meta : PredictionMeta
        ``Prediction.meta`` (`Trust.lines` of its verdicts).
    """
    return meta.trust.lines()
