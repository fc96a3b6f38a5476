"""Scoring one fold: a model's held-out predictions (with spatial context and per-slide
adaptation, as the engine makes them), their accuracy figures and trust scores.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ..vocabulary import GeneIndex, marker_zscore
from .config import TrainConfig
from .metrics import gene_gene_agreement, nanmean, panel_zscore, pearson_per_gene, roc_auc

__all__ = [
    "ablation_predictions",
    "around_section",
    "embedded_with_context",
    "held_out_embeddings",
    "held_out_predictions",
    "predict_sets",
    "score_predictions",
    "trust_scores",
    "untrained_model",
    "with_context",
]


def score_predictions(
    pred: np.ndarray,
    true: np.ndarray,
    genes: list[str],
    sets: dict[str, list[str]],
    tumor: np.ndarray,
    panel: list[str],
) -> dict[str, Any]:
    r = pearson_per_gene(pred, true)
    out: dict[str, Any] = {}
    for name, subset in sets.items():
        idx = [genes.index(g) for g in subset]
        out[f"r_{name}"] = nanmean(r[idx])
    out["r_all"] = nanmean(r)
    hvg = [genes.index(g) for g in sets["hvg50"]]
    out["gene_gene"] = gene_gene_agreement(pred[:, hvg], true[:, hvg])
    known = tumor >= 0
    out["tumor_auc"] = roc_auc(panel_zscore(pred[known], genes, panel), tumor[known] == 1) if known.any() else None
    out["r_per_gene"] = {
        g: (None if not np.isfinite(v) else round(float(v), 4))
        for g, v in zip(genes, r)
        if g in set(sum(sets.values(), []))
    }
    return out


def around_section(fn, spots, section: str, tc: TrainConfig, weights: np.ndarray):
    """``fn`` of a held-out section's neighbouring patches (`map_neighbours`); None
    without context."""
    from .neighbours import map_neighbours

    if not np.any(weights):
        return None
    return map_neighbours(
        fn, spots, [section], tc.her2st, patch_um=tc.io.patch_um, input_px=tc.io.input_px, cache_dir=Path(tc.cache_dir)
    )


def with_context(predict, embeddings, neighbours, weights: np.ndarray) -> np.ndarray:
    """``predict`` of the spots' embeddings, mixed with that of their neighbouring patches
    (the engine's spatial context) when ``weights`` are not all zero."""
    from ..inference.context import mix_with_neighbours

    centre = predict(embeddings)
    if neighbours is None or not np.any(weights):
        return centre
    around = np.stack([predict(e) for e in neighbours[0]])
    return mix_with_neighbours(centre, around, neighbours[1], weights)


def predict_sets(
    model, embs, train_expression: np.ndarray, neighbours, train_encoded: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Predictions of a trained model with its retrieval settings (top-k, spatial
    context) from a held-out section's spot embeddings ``embs``: retrieval over its bank,
    over the training spots only (to measure what the extra bank sections add), and its
    ridge head.

    ``neighbours`` is ``(embeddings, tissue)`` of the spots' 8 neighbouring patches
    (`map_neighbours`), or None without context. ``train_encoded`` is what the model's
    expression encoder takes of the training spots (`encoder_input`; default: their
    expression)."""
    import torch

    from ..inference.context import neighbour_weights
    from ..model import ReferenceBank, retrieve

    top_k = model.retrieval.top_k
    weights = neighbour_weights(model.retrieval.context_sigma_um, model.io.patch_um)
    with torch.inference_mode():
        train_expr = torch.from_numpy(train_expression).to(model.device)
        encoded = torch.from_numpy(train_encoded if train_encoded is not None else train_expression).to(model.device)
        train_bank = ReferenceBank(model.network.encode_expression(encoded), train_expr)

    def by(method: str):
        return lambda e: model.predict_embeddings(e, method=method, top_k=top_k)[0].cpu().numpy()

    return {
        "retrieval": with_context(by("retrieval"), embs, neighbours, weights),
        "ridge": with_context(by("ridge"), embs, neighbours, weights),
        "retrieval_train_bank": with_context(
            lambda e: retrieve(e, train_bank, top_k=top_k)[0].cpu().numpy(), embs, neighbours, weights
        ),
    }


def embedded_with_context(model, features, raw_neighbours, adaptation):
    """A section's spot embeddings and its neighbours' ``(embeddings, tissue)`` (or None)
    from their raw features, adapted with ``adaptation`` (None: not adapted)."""
    embs = model.embed_features(features, adaptation=adaptation)
    if raw_neighbours is None:
        return embs, None
    return embs, ([model.embed_features(f, adaptation=adaptation) for f in raw_neighbours[0]], raw_neighbours[1])


def held_out_predictions(model, spots, section: str, tc: TrainConfig) -> np.ndarray:
    """Retrieval predictions of a held-out section with the model's own top-k, spatial
    context and per-slide adaptation: what `iter_evaluate` scores as ``retrieval``.

    Parameters
    ----------
    model : STModel
        A fold model.
    spots : SpotSet
        The section's spots, with patches.
    section : str
        Its id (her2st) or ``.h5ad`` path, to read the neighbouring patches.
    tc : TrainConfig
        Where the data and patch cache are (``her2st``, ``cache_dir``).

    Returns
    -------
    numpy.ndarray
        ``(spots, genes)``.
    """
    embs, neighbours, weights = held_out_embeddings(model, spots, section, tc)
    return with_context(lambda e: model.predict_embeddings(e)[0].cpu().numpy(), embs, neighbours, weights)


def held_out_embeddings(model, spots, section: str, tc: TrainConfig):
    """A held-out section's image embeddings as the evaluation makes them (per-slide
    adaptation, the neighbouring patches for spatial context).

    Parameters
    ----------
    model, spots, section, tc
        As for `held_out_predictions`.

    Returns
    -------
    tuple
        ``(embeddings, neighbours, weights)``: the spots' embeddings, ``(embeddings,
        tissue)`` of their 8 neighbours or None without context, and the context weights,
        as `with_context` and `predict_sets` take them.
    """
    from ..inference.context import neighbour_weights

    weights = neighbour_weights(model.retrieval.context_sigma_um, model.io.patch_um)
    features = model.features_many(spots.patches)
    embs, neighbours = embedded_with_context(
        model,
        features,
        around_section(model.features_many, spots, section, tc, weights),
        model.slide_adaptation(features),
    )
    return embs, neighbours, weights


#: Ablation of the retrieval settings: the paper's top-k without context, then each
#: change of the recipe alone, then both (same trained model, same held-out spots).
ABLATION_BASE_TOP_K = 50


def ablation_predictions(model, features, raw_neighbours, adaptation) -> dict[str, np.ndarray]:
    """Retrieval predictions of every combination of the recipe's top-k, context and
    per-slide adaptation with the paper's top-k (50), no context and no adaptation, keyed
    ``k<top_k>_ctx<sigma>`` plus ``_adapt-<mode>`` where adapted."""
    from ..inference.context import neighbour_weights

    out = {}
    for adapted in [None] + ([adaptation] if adaptation is not None else []):
        embs, neighbours = embedded_with_context(model, features, raw_neighbours, adapted)
        suffix = f"_adapt-{adapted.mode}" if adapted is not None else ""
        for k in sorted({ABLATION_BASE_TOP_K, model.retrieval.top_k}):
            for sigma in sorted({0.0, float(model.retrieval.context_sigma_um)}):
                weights = neighbour_weights(sigma, model.io.patch_um)

                def predict(e, k=k):
                    return model.predict_embeddings(e, method="retrieval", top_k=k)[0].cpu().numpy()

                out[f"k{k}_ctx{sigma:g}{suffix}"] = with_context(predict, embs, neighbours, weights)
    return out


def _calls(called: np.ndarray, label: np.ndarray) -> dict[str, float]:
    return {
        "sensitivity": round(float((called & label).sum() / max(label.sum(), 1)), 4),
        "specificity": round(float((~called & ~label).sum() / max((~label).sum(), 1)), 4),
        "called_share": round(float(called.mean()), 4),
    }


def trust_scores(model, spots, retrieval: np.ndarray, panel: list[str], features=None) -> dict[str, Any]:
    """Out-of-domain share and tumour calls of a held-out section, from a calibrated model.

    Parameters
    ----------
    model : STModel
        With ``calibration`` set (its tumour part computed on the fold's panel).
    spots : SpotSet
        The held-out section (patches, tumour labels: 1 cancer, 0 other, -1 unknown).
    retrieval : numpy.ndarray
        The model's retrieval predictions for those spots.
    panel : list of str
        The fold's marker panel.
    features : torch.Tensor, optional
        The spots' raw pooled features, if computed already (the out-of-domain score is
        always measured on raw, unadapted features).

    Returns
    -------
    dict
        ``ood_share``; ``absolute`` (training-spot units, the calibrated threshold,
        out-of-domain spots not called) and ``slide_otsu`` (the section's own z-scores,
        Otsu's threshold on them): sensitivity, specificity and share called against the
        cancer labels; the AUC of both scores.
    """
    from skimage.filters import threshold_otsu

    feats = features if features is not None else model.features_many(spots.patches)
    cal = model.calibration
    ood = model.domain_distance(feats).cpu().numpy() > cal["domain"]["threshold"]
    genes = model.genes
    gene_mean, gene_std = (cal["tumor"][k].cpu().numpy() for k in ("gene_mean", "gene_std"))

    def calibrated_zscore(genes_of_panel: list[str]) -> np.ndarray:
        idx = GeneIndex(genes).positions(genes_of_panel)
        return marker_zscore(retrieval[:, idx], gene_mean[idx], gene_std[idx])

    absolute = calibrated_zscore(panel)
    per_slide = panel_zscore(retrieval, genes, panel)
    known = spots.tumor >= 0
    label = spots.tumor[known] == 1
    out: dict[str, Any] = {
        "ood_share": round(float(ood.mean()), 4),
        "spots": int(len(spots)),
        "labelled": int(known.sum()),
        "cancer_share": round(float(label.mean()), 4),
    }
    threshold = cal["tumor"]["threshold"]
    if threshold is not None:
        called = (absolute > threshold) & ~ood
        out["absolute"] = {
            "threshold": threshold,
            "auc": round(roc_auc(absolute[known], label), 4),
            **_calls(called[known], label),
        }
    contrast_cal = cal["tumor"].get("contrast")
    contrast = None
    if contrast_cal:  # marker minus counter-panel z-score (evaluation only, issue 19 item 4)
        contrast = absolute - calibrated_zscore(contrast_cal["counter_panel"])
        out["contrast"] = {
            "threshold": contrast_cal["threshold"],
            "counter_panel": contrast_cal["counter_panel"],
            "auc": round(roc_auc(contrast[known], label), 4),
            **_calls(((contrast > contrast_cal["threshold"]) & ~ood)[known], label),
        }
    otsu = float(threshold_otsu(per_slide))
    out["slide_otsu"] = {
        "threshold": round(otsu, 4),
        "auc": round(roc_auc(per_slide[known], label), 4),
        **_calls((per_slide > otsu)[known], label),
    }
    # Per-spot scores of the labelled spots, so that other tumour rules (a per-slide
    # quantile or mixture with an absolute floor, issue 19 item 4) can be compared on
    # the same predictions without retraining (evaluation/experiments/tumour_rule).
    out["labelled_scores"] = {
        "absolute": [round(float(v), 4) for v in absolute[known]],
        "slide_z": [round(float(v), 4) for v in per_slide[known]],
        "out_of_domain": [bool(v) for v in ood[known]],
        "cancer": [bool(v) for v in label],
    }
    if contrast is not None:
        out["labelled_scores"]["contrast"] = [round(float(v), 4) for v in contrast[known]]
    return out


def untrained_model(tc: TrainConfig, genes, bank_expression):
    """The trivial baseline: a randomly initialised network with the same bank."""
    import torch

    from ..model import ReferenceBank, STModel, create_model

    torch.manual_seed(tc.seed)
    net = create_model(replace(tc.model, n_genes=len(genes))).eval()
    with torch.inference_mode():
        emb = net.encode_expression(torch.from_numpy(bank_expression))
    return STModel(
        net, replace(tc.io, genes=list(genes)), ReferenceBank(emb, torch.from_numpy(bank_expression)), device="cpu"
    )
