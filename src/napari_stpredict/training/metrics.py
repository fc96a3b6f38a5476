"""Evaluation metrics: per-gene Pearson r, gene sets, gene-gene correlation agreement, ROC-AUC."""

from __future__ import annotations

import numpy as np

from ..vocabulary import GeneIndex, marker_zscore

__all__ = ["pearson_per_gene", "top_genes", "gene_gene_agreement", "roc_auc", "panel_zscore", "nanmean"]


def pearson_per_gene(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Pearson r of each column across spots; NaN where either side is constant."""
    p = pred - pred.mean(0)
    t = true - true.mean(0)
    denom = np.sqrt((p**2).sum(0) * (t**2).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (p * t).sum(0) / denom
    r[denom < 1e-12] = np.nan
    return r


def nanmean(values) -> float:
    """Mean ignoring NaN (NaN if all are NaN)."""
    values = np.asarray(values, float)
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


def top_genes(expression: np.ndarray, genes: list[str], n: int = 50, by: str = "mean") -> list[str]:
    """The ``n`` genes with the highest mean (HEG) or variance (HVG) of log-normalised expression."""
    score = expression.mean(0) if by == "mean" else expression.var(0)
    return [genes[i] for i in np.argsort(-score)[:n]]


def gene_gene_agreement(pred: np.ndarray, true: np.ndarray) -> float:
    """Pearson r between the gene-gene correlation matrices of predicted and measured expression.

    Only gene pairs where both correlations are defined count.
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        cp = np.corrcoef(pred, rowvar=False)
        ct = np.corrcoef(true, rowvar=False)
    iu = np.triu_indices_from(cp, k=1)
    a, b = cp[iu], ct[iu]
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3:
        return float("nan")
    return float(np.corrcoef(a[ok], b[ok])[0, 1])


def roc_auc(score: np.ndarray, label: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties counted half); NaN without both classes."""
    score = np.asarray(score, float)
    label = np.asarray(label).astype(bool)
    n_pos, n_neg = label.sum(), (~label).sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score))
    sorted_scores = score[order]
    i = 0
    while i < len(score):  # average ranks over ties
        j = i
        while j + 1 < len(score) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[label].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def panel_zscore(expression: np.ndarray, genes: list[str], panel: list[str]) -> np.ndarray:
    """The per-slide tumour score of these spots: `marker_zscore` of the panel genes present
    (standardised within the given spots; gene names matched in any case)."""
    idx = GeneIndex(genes).positions(panel)
    if not idx:
        raise ValueError(f"none of the marker genes {panel} is among the model's genes")
    return marker_zscore(expression[:, idx])
