"""Predict expression from image embeddings: retrieval over a reference bank, or a ridge head."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["ReferenceBank", "retrieve", "RidgeHead", "fit_ridge"]


@dataclass
class ReferenceBank:
    """Reference spots the retrieval predictor averages over.

    Attributes
    ----------
    embeddings : torch.Tensor
        ``(n_spots, dim)`` expression embeddings (L2-normalised on construction).
    expression : torch.Tensor
        ``(n_spots, n_genes)`` log-normalised expression of the same spots.
    """

    embeddings: torch.Tensor
    expression: torch.Tensor

    def __post_init__(self) -> None:
        if self.embeddings.shape[0] != self.expression.shape[0]:
            raise ValueError(
                f"bank has {self.embeddings.shape[0]} embeddings but {self.expression.shape[0]} expression rows"
            )
        self.embeddings = torch.nn.functional.normalize(self.embeddings.float(), dim=1)
        self.expression = self.expression.float()

    def __len__(self) -> int:
        return self.embeddings.shape[0]


def retrieve(query: torch.Tensor, bank: ReferenceBank, top_k: int = 50, tie_tol: float = 1e-6):
    """Mean expression of the ``top_k`` bank spots most similar (cosine) to each query.

    Spots tied with the k-th similarity share the remaining weight equally, so the
    result does not depend on the order of the bank: when all similarities tie, the
    prediction is the bank mean.

    Parameters
    ----------
    query : torch.Tensor
        ``(batch, dim)`` image embeddings.
    bank : ReferenceBank
    top_k : int
        Number of neighbours (paper: 50); capped at the bank size.

    Returns
    -------
    prediction : torch.Tensor
        ``(batch, n_genes)``.
    similarity : torch.Tensor
        ``(batch,)`` mean cosine similarity of the neighbours: how close the query is to
        the reference data (low = unlike anything the model knows).
    """
    k = max(1, min(int(top_k), len(bank)))
    sims = torch.nn.functional.normalize(query.float(), dim=1) @ bank.embeddings.T  # (B, N)
    top_vals = torch.topk(sims, k, dim=1).values
    kth = top_vals[:, -1:]
    above = sims > kth + tie_tol
    tied = (sims - kth).abs() <= tie_tol
    n_above = above.sum(1, keepdim=True)
    n_tied = tied.sum(1, keepdim=True).clamp(min=1)
    weights = above.float() + tied.float() * ((k - n_above).clamp(min=0) / n_tied)
    prediction = weights @ bank.expression / k
    return prediction, top_vals.mean(dim=1)


@dataclass
class RidgeHead:
    """Linear map from image embedding to expression, fitted in closed form."""

    weight: torch.Tensor  # (dim, n_genes)
    bias: torch.Tensor  # (n_genes,)
    alpha: float

    def __call__(self, embeddings: torch.Tensor) -> torch.Tensor:
        return embeddings.float() @ self.weight.float() + self.bias.float()


def fit_ridge(x: np.ndarray, y: np.ndarray, alphas=(0.1, 1.0, 10.0, 100.0, 1000.0)) -> RidgeHead:
    """Fit ridge regression, choosing alpha by exact leave-one-out error (via SVD).

    Parameters
    ----------
    x : numpy.ndarray
        ``(n, p)`` inputs (image embeddings or features).
    y : numpy.ndarray
        ``(n, g)`` targets.
    """
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    x_mean, y_mean = x.mean(0), y.mean(0)
    xc, yc = x - x_mean, y - y_mean
    u, s, vt = np.linalg.svd(xc, full_matrices=False)
    uty = u.T @ yc
    best = None
    for alpha in alphas:
        d = s / (s**2 + alpha)
        fitted = u @ ((s * d)[:, None] * uty)
        hat_diag = (u**2 * (s * d)[None, :]).sum(1)
        loo = ((yc - fitted) / (1 - hat_diag)[:, None].clip(1e-6)) ** 2
        err = loo.mean()
        if best is None or err < best[0]:
            best = (err, alpha, d)
    assert best is not None  # the loop ran over at least one alpha
    _, alpha, d = best
    weight = vt.T @ (d[:, None] * uty)
    bias = y_mean - x_mean @ weight
    return RidgeHead(torch.from_numpy(weight).float(), torch.from_numpy(bias).float(), float(alpha))
