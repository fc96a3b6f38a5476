"""Per-gene held-out accuracy a model was shipped with: which maps deserve trust."""

from __future__ import annotations

__all__ = ["gene_accuracy"]


def gene_accuracy(model) -> tuple[dict[str, float | None], str]:
    """Each gene's held-out Pearson r from the model's embedded evaluation.

    Parameters
    ----------
    model : STModel

    Returns
    -------
    dict
        Gene -> mean r over held-out sections (None where not measured).
    str
        Where the figures come from, or that the model carries none.
    """
    table = (model.evaluation or {}).get("per_gene_r") or {}
    figures = table.get("r") or {}
    if not figures:
        return dict.fromkeys(model.genes), "this model carries no per-gene evaluation"
    return {g: figures.get(g) for g in model.genes}, table.get("source", "held-out evaluation")
