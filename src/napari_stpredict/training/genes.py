"""Choosing genes from training data only: the marker panel and the model's gene list."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..vocabulary import HER2_AMPLICON, log1p_cp10k
from .data import tumor_labels

__all__ = [
    "HER2_AMPLICON",
    "benchmark_genes",
    "select_marker_panel",
    "select_counter_panel",
    "model_gene_list",
    "common_genes",
]


def benchmark_genes(path: str | Path) -> list[str]:
    """A gene list from a ``.npy`` file of strings, e.g. the her2st benchmark list of
    HisToGene/Hist2ST (785 genes).

    Read without pickle: a ``.npy`` holding Python objects could run code when loaded,
    and a training config can come from anyone.

    Raises
    ------
    ValueError
        Naming the file: unreadable, holding pickled objects, not a 1-d array of strings,
        or empty.
    """
    path = Path(path)
    try:
        genes = np.load(path, allow_pickle=False)
    except ValueError as exc:  # numpy's refusal of an object array
        raise ValueError(
            f"{path}: the gene list holds pickled Python objects, which are refused (they can run "
            "code); save it as an array of strings, e.g. np.save(path, np.array(genes, dtype=str))"
        ) from exc
    except (OSError, EOFError) as exc:
        raise ValueError(f"{path}: not a readable .npy gene list ({exc})") from exc
    if not isinstance(genes, np.ndarray) or genes.ndim != 1 or genes.dtype.kind not in "US" or not len(genes):
        raise ValueError(f"{path}: a gene list must be a non-empty 1-d array of gene names (strings)")
    return [str(g) for g in genes]


def common_genes(adatas) -> list[str]:
    """Genes present in every AnnData, in the order of the first."""
    common = set(adatas[0].var_names)
    for a in adatas[1:]:
        common &= set(a.var_names)
    return [g for g in adatas[0].var_names if g in common]


def _mean_effects(adatas, candidates: list[str], min_spots: int) -> tuple[np.ndarray, list[str]]:
    """Each candidate's standardised cancer-minus-other difference, averaged over the
    labelled sections (each counts alike), and the sections used."""
    effects, used = [], []
    for adata in adatas:
        labels = tumor_labels(adata.obs)
        cancer, other = labels == 1, labels == 0
        if cancer.sum() < min_spots or other.sum() < min_spots:
            continue
        idx = [adata.var_names.get_loc(g) for g in candidates]
        expr = log1p_cp10k(adata, idx)
        a, b = expr[cancer], expr[other]
        pooled = np.sqrt((a.var(0) * (len(a) - 1) + b.var(0) * (len(b) - 1)) / (len(a) + len(b) - 2))
        effects.append((a.mean(0) - b.mean(0)) / np.maximum(pooled, 1e-3))
        used.append(str(adata.obs["section"].iloc[0]))
    if not effects:
        raise ValueError("no training section has enough cancer and non-cancer labelled spots to choose markers")
    return np.mean(effects, axis=0), used


def select_marker_panel(
    adatas, candidates: list[str], *, n_markers: int = 8, min_spots: int = 5, amplicon_min_effect: float = 0.3
) -> dict:
    """Choose tumour marker genes from labelled training sections.

    For each section with at least ``min_spots`` cancer and non-cancer spots (the
    authors' expression clusters named "cancer ..."), each gene's standardised mean
    difference (cancer minus other, pooled SD) of log-normalised expression is computed;
    effects are averaged over sections so that every section counts alike. The panel is
    the ``n_markers`` genes with the largest mean effect, plus the HER2-amplicon genes
    whose mean effect exceeds ``amplicon_min_effect`` (a HER2-positive cohort: the
    amplicon marks tumour cells, but is kept only where the data agree).

    Returns
    -------
    dict
        ``panel`` (genes), ``effect`` (gene -> mean effect for the panel), ``sections``
        used, and ``why`` (one sentence).
    """
    mean_effect, used = _mean_effects(adatas, candidates, min_spots)
    order = np.argsort(-mean_effect)
    panel = [candidates[i] for i in order[:n_markers]]
    position = {g: i for i, g in enumerate(candidates)}
    for gene in HER2_AMPLICON:
        if gene in position and gene not in panel and mean_effect[position[gene]] > amplicon_min_effect:
            panel.append(gene)
    return {
        "panel": panel,
        "effect": {g: round(float(mean_effect[position[g]]), 3) for g in panel},
        "sections": used,
        "why": (
            f"top {n_markers} genes by standardised cancer-vs-other difference averaged over "
            f"{len(used)} training sections, plus HER2-amplicon genes with mean effect > {amplicon_min_effect}"
        ),
    }


def select_counter_panel(adatas, genes: list[str], *, n_genes: int = 8, min_spots: int = 5) -> dict:
    """Genes most depleted in cancer on the labelled training sections (the other side of
    the marker panel), chosen among the model's ``genes``.

    A contrast tumour score (marker z-score minus this panel's) cancels a shift that
    raises or lowers every predicted gene of a slide alike, such as retrieval drifting
    toward reference spots of another patient (issue 19, item 4). Used by the evaluation
    only: measured there, its threshold did not carry across patients
    (evaluation/experiments/tumour_rule).

    Returns
    -------
    dict
        ``panel`` (genes, most negative effect first), ``effect`` (gene -> mean effect)
        and ``sections`` used.
    """
    mean_effect, used = _mean_effects(adatas, list(genes), min_spots)
    order = np.argsort(mean_effect)[:n_genes]
    return {
        "panel": [genes[i] for i in order],
        "effect": {genes[i]: round(float(mean_effect[i]), 3) for i in order},
        "sections": used,
    }


def model_gene_list(benchmark: list[str], panel: list[str], available: set[str]) -> list[str]:
    """Benchmark genes, then the HER2 amplicon and panel genes not already in it (all present in the data)."""
    genes = [g for g in benchmark if g in available]
    for g in list(HER2_AMPLICON) + list(panel):
        if g in available and g not in genes:
            genes.append(g)
    return genes
