"""Loss functions of CMRCNet, as pure functions of tensors."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["contrastive_loss", "reconstruction_loss", "combined_loss"]


def contrastive_loss(image_emb: torch.Tensor, expr_emb: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """CLIP-style loss between paired image and expression embeddings, with BLEEP's soft targets.

    The target of spot i is not one-hot on i: it is the softmax of the average of the
    image-image and expression-expression similarities, so that spots that look and
    express alike are not pushed apart (Xie et al., BLEEP, 2023).

    Parameters
    ----------
    image_emb, expr_emb : torch.Tensor
        ``(batch, dim)`` embeddings of the same spots in the same order.
    temperature : float
        Softmax temperature (paper: 1) of both the logits and the soft targets. BLEEP's
        code multiplies the targets' similarities by it while the logits divide: the same
        at 1, opposite sharpening otherwise; here both divide, so the loss of embeddings
        at temperature T equals that of the embeddings scaled by 1/sqrt(T) at 1.
    """
    logits = expr_emb @ image_emb.T / temperature
    image_sim = image_emb @ image_emb.T
    expr_sim = expr_emb @ expr_emb.T
    targets = F.softmax((image_sim + expr_sim) / 2 / temperature, dim=-1)
    expr_loss = (-targets * F.log_softmax(logits, dim=-1)).sum(-1)
    image_loss = (-targets.T * F.log_softmax(logits.T, dim=-1)).sum(-1)
    return ((expr_loss + image_loss) / 2).mean()


def reconstruction_loss(reconstructed: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MSE between the embedding rebuilt from masked image tokens + expression and the image embedding."""
    return F.mse_loss(reconstructed, target)


def combined_loss(l_contrastive: torch.Tensor, l_reconstruction: torch.Tensor | None) -> torch.Tensor:
    """``log(1 + L_con) + log(1 + L_rec)`` (the paper's balance of the two terms)."""
    total = torch.log1p(l_contrastive)
    if l_reconstruction is not None:
        total = total + torch.log1p(l_reconstruction)
    return total
