"""The ground-floor vocabulary every floor shares: units, the expression transform,
gene panels, case-insensitive gene lookup and the marker z-score.

Nothing here imports another module of the package, so the display (layers, the dock),
the engine (inference) and training all take these from one place and none of them needs
to import another floor for a constant (``tests/test_import_layers.py`` checks that).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

__all__ = [
    "UNITS",
    "RESEARCH_USE",
    "HER2_AMPLICON",
    "DEFAULT_BREAST_PANEL",
    "GeneIndex",
    "log1p_cp10k",
    "marker_zscore",
    "safe_filename",
]

#: Units of every predicted and measured expression value the product shows or writes.
UNITS = "log1p(counts per 10,000)"

#: The line every output carries.
RESEARCH_USE = "Research use only; not for diagnosis."

#: Genes of the 17q12 HER2 amplicon, co-amplified with ERBB2 in HER2-positive tumours.
HER2_AMPLICON = ("ERBB2", "GRB7", "STARD3", "PGAP3", "MIEN1")

#: Breast carcinoma markers used for the tumour score when a model ships no panel of its own.
DEFAULT_BREAST_PANEL = ("ERBB2", "GRB7", "EPCAM", "TACSTD2", "SCD", "MUCL1", "CD24", "KRT19")


class GeneIndex:
    """Case-insensitive lookup of gene names, answering in the canonical spelling.

    Users type ``erbb2`` or ``Erbb2``; models, tables and layer names spell genes as the
    training data did. Every lookup of a user's gene name goes through this class.

    Parameters
    ----------
    genes : iterable of str
        The canonical names, in order (their position is the index returned). Where two
        names differ only in case, the first wins.

    Examples
    --------
    >>> index = GeneIndex(["ERBB2", "GRB7"])
    >>> index.position("erbb2"), index.canonical("grb7"), "Cd24" in index
    (0, 'GRB7', False)
    """

    def __init__(self, genes: Iterable[str]) -> None:
        self.genes: list[str] = [str(g) for g in genes]
        self._positions: dict[str, int] = {}
        for i, g in enumerate(self.genes):
            self._positions.setdefault(g.upper(), i)

    def __len__(self) -> int:
        return len(self.genes)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.strip().upper() in self._positions

    def find(self, name: str) -> int | None:
        """Position of ``name`` (any case), or None when it is not among the genes."""
        return self._positions.get(str(name).strip().upper())

    def position(self, name: str) -> int:
        """Position of ``name`` (any case).

        Raises
        ------
        KeyError
            Naming the gene and a few of the known ones.
        """
        i = self.find(name)
        if i is None:
            raise KeyError(f"gene {name!r} is not among these {len(self)} genes (e.g. {', '.join(self.genes[:5])})")
        return i

    def canonical(self, name: str) -> str:
        """``name`` as the genes spell it (raises `KeyError` like `position`)."""
        return self.genes[self.position(name)]

    def positions(self, names: Sequence[str]) -> list[int]:
        """Positions of those of ``names`` that are among the genes, in the given order."""
        return [i for i in (self.find(n) for n in names) if i is not None]

    def split(self, names: Sequence[str]) -> tuple[list[str], list[str]]:
        """``names`` as ``(known, missing)``: the known ones canonical, in the given order."""
        known = [self.genes[i] for i in (self.find(n) for n in names) if i is not None]
        missing = [n for n in names if n not in self]
        return known, missing


def safe_filename(name: str) -> str:
    """A file-name-safe version of a gene or slide name (Windows-safe too): the name of a
    gene's GeoTIFF, ``<safe_filename(gene)>.tif``."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def log1p_cp10k(adata, gene_indices) -> np.ndarray:
    """log(1 + counts / total * 10,000) of the chosen genes; totals over all genes of each spot.

    Parameters
    ----------
    adata : anndata.AnnData
        Raw counts in ``X`` (dense or sparse), spots x genes.
    gene_indices : array-like of int
        The columns to return.

    Returns
    -------
    numpy.ndarray
        float32, spots x chosen genes; a spot with a non-finite count anywhere is NaN in
        every gene (its total is unknown).
    """
    import scipy.sparse as sp

    x = adata.X
    totals = np.asarray(x.sum(axis=1)).ravel().astype(np.float64)
    totals[totals == 0] = 1.0
    sub = x[:, gene_indices]
    sub = sub.toarray() if sp.issparse(sub) else np.asarray(sub)
    out = np.log1p(sub / totals[:, None] * 1e4).astype(np.float32)
    out[~np.isfinite(totals)] = np.nan
    return out


def marker_zscore(markers: np.ndarray, mean: np.ndarray | None = None, sd: np.ndarray | None = None) -> np.ndarray:
    """The tumour score: each spot's mean z-score over the marker genes.

    Parameters
    ----------
    markers : numpy.ndarray
        Expression of the marker genes, spots x markers.
    mean, sd : numpy.ndarray, optional
        Per-marker statistics to standardise with: the model's training spots for the
        absolute score (comparable between slides). Left out: these spots' own (the
        per-slide score, which ranks spots within one slide only).

    Returns
    -------
    numpy.ndarray
        One score per spot (float32 for float32 input).
    """
    x = np.asarray(markers)
    if x.ndim != 2 or x.shape[1] == 0:
        raise ValueError(f"marker_zscore needs spots x markers with at least one marker, got shape {x.shape}")
    mean = x.mean(0) if mean is None else np.asarray(mean, x.dtype)
    sd = x.std(0) if sd is None else np.asarray(sd, x.dtype)
    return ((x - mean) / np.where(sd > 1e-8, sd, 1.0)).mean(1)
