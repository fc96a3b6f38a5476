"""Trust calibration computed at training time and stored in the checkpoint.

Two things a pathologist needs to read a map correctly, both measured on the model's
own training data, never on the slide being predicted:

- **Out of domain.** A patch is scored by the mean cosine distance of its pooled
  backbone features (what the model's image embedding is projected from) to the ``k``
  most similar training images. The threshold is a high quantile of the same distance
  measured on *held-out* sections: each training section scored against the training
  images of the other sections (the first of these is a different patient when the
  training data hold several). So a new section of the kind the model was trained on
  reads as in domain, and tissue the model never saw reads as out of domain.
- **Tumour in absolute units.** Each gene's predicted expression is standardised with
  the mean and standard deviation of the predictions on the training spots (not the
  slide's own), so a slide without tumour scores low instead of always having a "top
  half". Training-spot predictions retrieve from the bank without the spot's own
  section, as a new slide would. The default threshold is the best split (Youden's J)
  of those scores against the authors' cancer labels.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..vocabulary import GeneIndex, marker_zscore

__all__ = [
    "compute_calibration",
    "calibrate_checkpoint",
    "training_spot_predictions",
    "tumour_standardisation",
    "youden_threshold",
]

#: The out-of-domain score's quantile on held-out sections: 1 in 100 spots of a
#: section like the training data is flagged.
DOMAIN_QUANTILE = 0.99
DOMAIN_K = 10
#: Slide verdicts by share of flagged spots (held-out her2st sections: 0-4 %).
PARTLY_SHARE = 0.15
OUT_SHARE = 0.50


def _cosine_knn_distance(query: np.ndarray, reference: np.ndarray, k: int) -> np.ndarray:
    q = query / np.linalg.norm(query, axis=1, keepdims=True).clip(1e-12)
    r = reference / np.linalg.norm(reference, axis=1, keepdims=True).clip(1e-12)
    sims = q @ r.T
    k = max(1, min(k, r.shape[0]))
    return 1.0 - np.sort(sims, axis=1)[:, -k:].mean(1)


def _retrieve_leaving_out(query, bank, own_rows: np.ndarray, top_k: int):
    """Mean expression of the ``top_k`` most similar bank spots, each query's own row excluded."""
    import torch

    sims = torch.nn.functional.normalize(query.float(), dim=1) @ bank.embeddings.T
    sims[torch.arange(len(own_rows)), torch.from_numpy(own_rows)] = -float("inf")
    k = max(1, min(top_k, sims.shape[1] - 1))
    idx = torch.topk(sims, k, dim=1).indices
    return bank.expression[idx].mean(dim=1)


def youden_threshold(score: np.ndarray, label: np.ndarray) -> tuple[float, float, float]:
    """The score threshold maximising sensitivity + specificity - 1.

    Parameters
    ----------
    score : numpy.ndarray
        Per-spot scores.
    label : numpy.ndarray
        Boolean (True = positive).

    Returns
    -------
    tuple of float
        ``(threshold, sensitivity, specificity)``; a spot is positive when its score is
        above the threshold (midway between two observed scores).
    """
    order = np.sort(np.unique(score))
    cuts = (order[:-1] + order[1:]) / 2 if len(order) > 1 else order
    pos, neg = label.sum(), (~label).sum()
    best = (-2.0, float(cuts[0]), 0.0, 0.0)
    for c in cuts:
        called = score > c
        sens = (called & label).sum() / max(pos, 1)
        spec = (~called & ~label).sum() / max(neg, 1)
        if sens + spec - 1 > best[0]:
            best = (sens + spec - 1, float(c), float(sens), float(spec))
    return best[1], best[2], best[3]


def _context_weights(model) -> np.ndarray:
    """The model's spatial-context weights of a spot's 8 neighbours (all zero without context)."""
    from ..inference.context import neighbour_weights

    return neighbour_weights(model.retrieval.context_sigma_um, model.io.patch_um)


def _embedded_training_spots(model, train, neighbours, weights: np.ndarray):
    """The training spots' image embeddings (adapted per section, as the engine adapts a
    slide), their raw pooled features and each section's adaptation; checks first that
    the bank starts with these spots and that context (``weights``) has its neighbours."""
    import torch

    from .adapt import adapted_embeddings, section_adaptations

    if weights.any() and neighbours is None:
        raise ValueError(
            "the model uses spatial context (retrieval.context_sigma_um "
            f"{model.retrieval.context_sigma_um:g}): calibration needs the training spots' neighbouring patches"
        )
    n = len(train)
    bank_head = model.bank.expression[:n].cpu().numpy()
    if bank_head.shape[0] < n or not np.allclose(bank_head, train.expression, atol=2e-2):
        raise ValueError(
            "the model's bank does not start with its training spots in order; cannot leave a "
            "section out of it for calibration (retrain, or rebuild the bank with --rebuild-bank)"
        )
    embs, feats = [], []
    for i in range(0, n, 128):
        e, f = model.embed_with_features(train.patches[i : i + 128])
        embs.append(e)
        feats.append(f)
    emb, features = torch.cat(embs), torch.cat(feats)
    adaptations = section_adaptations(model, train, features)
    if any(a is not None for a in adaptations.values()):
        # The engine's per-slide adaptation, one section at a time (the neighbours'
        # embeddings in ``neighbours`` were adapted alike by `context_embeddings`).
        emb = adapted_embeddings(model, features, train.section, adaptations)
    return emb, features.cpu().numpy(), adaptations  # the out-of-domain reference stays raw


def _leave_section_out(
    model, train, emb, features, neighbours, weights: np.ndarray, top_k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Each training section scored as a new slide would be: its out-of-domain distance to
    the other sections' images and its expression retrieved from the bank without it."""
    import torch

    from ..inference.context import mix_with_neighbours
    from ..model import ReferenceBank, retrieve

    n = len(train)
    distances = np.empty(n, np.float64)
    predicted = np.empty((n, len(model.genes)), np.float32)
    for s in dict.fromkeys(train.section.tolist()):
        inside = train.section == s
        others = ~inside
        if others.any():
            distances[inside] = _cosine_knn_distance(features[inside], features[others], DOMAIN_K)
        else:  # one section only: each spot against the others of its section (optimistic)
            d = _cosine_knn_distance(features, features, DOMAIN_K + 1)
            distances[inside] = (d * (DOMAIN_K + 1) - 0.0) / DOMAIN_K  # drop the spot's own zero distance
        keep = torch.ones(len(model.bank), dtype=torch.bool)
        keep[:n] = torch.from_numpy(others)
        rows = torch.from_numpy(inside).to(emb.device)
        queries = [emb[rows]]
        if weights.any():  # the neighbours' predictions too, from the same bank
            queries += [e.to(emb.device)[rows] for e in neighbours[0]]
        if keep.any():
            bank = ReferenceBank(
                model.bank.embeddings[keep.to(model.bank.embeddings.device)],
                model.bank.expression[keep.to(model.bank.expression.device)],
            )
            preds = [retrieve(q, bank, top_k=top_k)[0].cpu().numpy() for q in queries]
        else:  # the bank is this one section: leave each spot's own entry out instead
            own = np.flatnonzero(inside)
            preds = [_retrieve_leaving_out(q, model.bank, own, top_k).cpu().numpy() for q in queries]
        if weights.any():
            present = np.asarray(neighbours[1])[:, inside]
            predicted[inside] = mix_with_neighbours(preds[0], np.stack(preds[1:]), present, weights)
        else:
            predicted[inside] = preds[0]
    return distances, predicted


def training_spot_predictions(model, train, *, top_k: int | None = None, neighbours=None) -> np.ndarray:
    """The training spots' expression as the calibration predicts it: each section's spots
    retrieved from the bank without that section, adapted and with context as a slide is.

    Parameters
    ----------
    model, train, top_k, neighbours
        As for `compute_calibration`.

    Returns
    -------
    numpy.ndarray
        ``(spots, genes)`` float32, in ``train``'s order.
    """
    top_k = model.retrieval.top_k if top_k is None else top_k
    weights = _context_weights(model)
    emb, features, _ = _embedded_training_spots(model, train, neighbours, weights)
    return _leave_section_out(model, train, emb, features, neighbours, weights, top_k)[1]


def tumour_standardisation(predicted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-gene mean and standard deviation of the training spots' predictions, the units of
    the absolute tumour score (a constant gene gets 1, so its z-score is 0, not undefined).

    Returns
    -------
    tuple of numpy.ndarray
        ``(gene_mean, gene_std)``, float32, one value per gene.
    """
    gene_std = predicted.std(0)
    return predicted.mean(0).astype(np.float32), np.where(gene_std > 1e-6, gene_std, 1.0).astype(np.float32)


def compute_calibration(
    model,
    train,
    *,
    markers: list[str] | None = None,
    counter: list[str] | None = None,
    top_k: int | None = None,
    neighbours=None,
) -> dict[str, Any]:
    """Out-of-domain reference and threshold, tumour-score standardisation and threshold.

    Parameters
    ----------
    model : STModel
        The trained model; its bank must start with ``train``'s spots in order (as
        `iter_train` builds it), so that each training section can be left out of it.
    train : SpotSet
        The training spots with patches, sections and tumour labels (-1 unknown).
    markers : list of str, optional
        The marker panel (default: the model's, from its provenance).
    counter : list of str, optional
        Genes depleted in cancer (the evaluation passes the fold's ``counter_panel``).
        When given, ``tumor["contrast"]`` holds the threshold of the contrast score
        (marker z-score minus this panel's), calibrated like the absolute one. An
        evaluation-only score: its threshold did not carry across patients
        (evaluation/experiments/tumour_rule), so trainings do not compute it.
    top_k : int, optional
        Retrieval neighbours, as in prediction (default: the model's ``retrieval``).
    neighbours : tuple, optional
        ``(embeddings, tissue)``: the image embeddings ``(8, n, d)`` of each training
        spot's 8 neighbouring patches and ``(8, n)`` whether each is tissue
        (`napari_stpredict.training.neighbours.map_neighbours`). Needed when the model
        uses spatial context (``model.retrieval.context_sigma_um > 0``): the tumour
        scores are then standardised and thresholded on context predictions, as a
        slide's are made.

    Returns
    -------
    dict
        ``{"version", "domain": {...}, "tumor": {...}}`` for `save_checkpoint`.
    """
    import torch

    from ..training.metrics import roc_auc

    top_k = model.retrieval.top_k if top_k is None else top_k
    weights = _context_weights(model)
    emb, features, adaptations = _embedded_training_spots(model, train, neighbours, weights)
    distances, predicted = _leave_section_out(model, train, emb, features, neighbours, weights, top_k)
    sections = list(dict.fromkeys(train.section.tolist()))
    threshold = float(np.quantile(distances, DOMAIN_QUANTILE))
    held_out_share = {s: round(float(np.mean(distances[train.section == s] > threshold)), 4) for s in sections}

    gene_mean, gene_std = tumour_standardisation(predicted)
    panel = list(markers if markers is not None else model.provenance.get("markers", {}).get("panel", []))
    index = GeneIndex(model.genes)
    used = [g for g in panel if g in index]
    tumor: dict[str, Any] = {
        "markers": used,
        "gene_mean": torch.from_numpy(gene_mean),
        "gene_std": torch.from_numpy(gene_std),
        "threshold": None,
        "training_auc": None,
        "sensitivity": None,
        "specificity": None,
        "how": "predicted expression of the training spots, each section's spots retrieved "
        "from the bank without that section"
        + (
            f", its image features adapted to the training average ({model.retrieval.adaptation})"
            if any(a is not None for a in adaptations.values())
            else ""
        )
        + (
            f", mixed with their neighbouring patches' (context σ {model.retrieval.context_sigma_um:g} µm)"
            if weights.any()
            else ""
        )
        + "; threshold: Youden's J against the data's cancer labels",
    }
    known = train.tumor >= 0
    if used and known.any() and len(np.unique(train.tumor[known])) == 2:
        idx = [index.position(g) for g in used]
        score = marker_zscore(predicted[:, idx], gene_mean[idx], gene_std[idx])
        label = train.tumor[known] == 1
        t, sens, spec = youden_threshold(score[known], label)
        tumor.update(
            threshold=round(t, 4),
            training_auc=round(float(roc_auc(score[known], label)), 4),
            sensitivity=round(sens, 4),
            specificity=round(spec, 4),
            cancer_share=round(float(label.mean()), 4),
        )
        against = [g for g in (counter or []) if g in index and g not in used]
        if against:
            cidx = [index.position(g) for g in against]
            contrast = score - marker_zscore(predicted[:, cidx], gene_mean[cidx], gene_std[cidx])
            ct, csens, cspec = youden_threshold(contrast[known], label)
            tumor["contrast"] = {
                "counter_panel": against,
                "threshold": round(ct, 4),
                "training_auc": round(float(roc_auc(contrast[known], label)), 4),
                "sensitivity": round(csens, 4),
                "specificity": round(cspec, 4),
                "how": "marker z-score minus the z-score of the genes most depleted in cancer on the "
                "training sections; threshold: Youden's J on the same training-spot predictions",
            }
    return {
        "version": 1,
        "domain": {
            "reference": torch.from_numpy(features),
            "k": DOMAIN_K,
            "threshold": threshold,
            "quantile": DOMAIN_QUANTILE,
            "partly_share": PARTLY_SHARE,
            "out_share": OUT_SHARE,
            "held_out_share": held_out_share,
            "sections": sections,
            "measure": f"mean cosine distance of pooled backbone features to the {DOMAIN_K} most similar "
            "training images",
            "how": "threshold: the quantile of that distance on each training section scored against the "
            "other sections' images",
        },
        "tumor": tumor,
    }


def calibrate_checkpoint(checkpoint, out, *, her2st: str | None, cache_dir=None) -> Any:
    """Write a copy of ``checkpoint`` with a trust calibration (bank and weights unchanged).

    For checkpoints written before calibration existed; the training sections named in
    its provenance must be readable (her2st ids need ``her2st``).

    Returns
    -------
    pathlib.Path
        The written checkpoint.
    """
    from pathlib import Path

    from ..model import load_model, read_checkpoint, save_checkpoint
    from .data import SpotSet
    from .neighbours import context_embeddings
    from .sections import section_spots

    data = read_checkpoint(checkpoint)
    model = load_model(checkpoint, device="cpu")
    io = model.io
    train = SpotSet.concat(
        [
            section_spots(
                s,
                her2st,
                model.genes,
                patch_um=io.patch_um,
                input_px=io.input_px,
                cache_dir=Path(cache_dir) if cache_dir else None,
            )
            for s in model.provenance["train_sections"]
        ]
    )
    context = context_embeddings(
        model, train, model.provenance["train_sections"], her2st, cache_dir=Path(cache_dir) if cache_dir else None
    )
    calibration = compute_calibration(model, train, neighbours=context)
    half = data["bank"]["embeddings"].dtype == _half()
    return save_checkpoint(
        out,
        model=model.network,
        io=io,
        bank_embeddings=data["bank"]["embeddings"].float(),
        bank_expression=data["bank"]["expression"].float(),
        ridge=model.ridge,
        provenance=model.provenance,
        evaluation=model.evaluation,
        calibration=calibration,
        retrieval=model.retrieval,
        half=half,
    )


def _half():
    import torch

    return torch.float16
