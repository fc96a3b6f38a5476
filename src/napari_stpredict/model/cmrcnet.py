"""CMRCNet: image and expression encoders with contrastive and cross-modal mask reconstruction losses.

Follows Liu et al. 2025 as their public code builds it (docs/ARCHITECTURE.md, "The model"): a timm
backbone gives image tokens, mean-pooled and projected to the shared embedding; the
expression goes through a BLEEP projection head; the reconstruction branch masks the
projected image tokens, lets them cross-attend to gene tokens made from the expression,
passes them twice through one fusion block, and regresses the image embedding.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import StPredictError
from ._compat import import_timm
from .config import ModelConfig
from .losses import combined_loss, contrastive_loss, reconstruction_loss

__all__ = ["CMRCNet", "ProjectionHead", "create_model"]

_VIT_PREFIXES = ("vit", "deit", "eva", "beit", "cait", "xcit")


class ProjectionHead(nn.Module):
    """BLEEP's projection head: Linear, GELU, Linear, dropout, residual, LayerNorm."""

    def __init__(self, in_dim: int, out_dim: int, dropout: float) -> None:
        super().__init__()
        self.projection = nn.Linear(in_dim, out_dim)
        self.gelu = nn.GELU()
        self.fc = nn.Linear(out_dim, out_dim)
        self.dropout = nn.Dropout(dropout)
        self.layer_norm = nn.LayerNorm(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        projected = self.projection(x)
        x = self.dropout(self.fc(self.gelu(projected)))
        return self.layer_norm(x + projected)


class GeneTokenizer(nn.Module):
    """Self-normalising MLP (SELU, alpha dropout) turning expression into gene tokens."""

    def __init__(self, n_genes: int, n_tokens: int, dim: int, dropout: float) -> None:
        super().__init__()
        self.n_tokens, self.dim = n_tokens, dim
        self.mlp = nn.Sequential(
            nn.Linear(n_genes, dim),
            nn.SELU(),
            nn.AlphaDropout(dropout),
            nn.Linear(dim, n_tokens * dim),
            nn.SELU(),
            nn.AlphaDropout(dropout),
        )

    def forward(self, expression: torch.Tensor) -> torch.Tensor:
        return self.mlp(expression).view(-1, self.n_tokens, self.dim)


class FusionBlock(nn.Module):
    """Pre-norm transformer block (self-attention + MLP); applied several times with shared weights."""

    def __init__(self, dim: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, n_heads, dropout=dropout, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


def _create_backbone(config: ModelConfig) -> nn.Module:
    timm = import_timm()
    kwargs: dict = {"num_classes": 0, "global_pool": ""}
    if config.backbone.startswith(_VIT_PREFIXES):
        kwargs["img_size"] = config.img_size
    try:
        if config.backbone_weights:
            return timm.create_model(
                config.backbone,
                pretrained=True,
                pretrained_cfg_overlay={"file": str(config.backbone_weights)},
                **kwargs,
            )
        return timm.create_model(config.backbone, pretrained=False, **kwargs)
    except RuntimeError as exc:
        if "Unknown model" in str(exc):
            raise StPredictError(f"backbone {config.backbone!r} is not a timm model name") from exc
        raise StPredictError(
            f"cannot load backbone weights {config.backbone_weights!r} into {config.backbone!r}: {exc}"
        ) from exc
    except (FileNotFoundError, OSError) as exc:
        raise StPredictError(f"backbone weights file {config.backbone_weights!r}: {exc}") from exc


class CMRCNet(nn.Module):
    """The model: one class, backbone as a parameter.

    Parameters
    ----------
    config : ModelConfig
        Architecture; ``config.n_genes`` must be set.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.n_genes <= 0:
            raise ValueError("ModelConfig.n_genes must be positive (set it from the gene list)")
        self.config = config
        dim = config.embed_dim
        self.backbone = _create_backbone(config)
        feat_dim: int = self.backbone.num_features  # type: ignore[assignment]  # timm sets an int attribute
        self.image_projection = ProjectionHead(feat_dim, dim, config.dropout)
        self.expression_projection = ProjectionHead(config.n_genes, dim, config.dropout)
        if config.reconstruction:
            self.token_projection = nn.Linear(feat_dim, dim)
            self.gene_tokenizer = GeneTokenizer(config.n_genes, config.n_gene_tokens, dim, config.dropout)
            self.cross_norm_q = nn.LayerNorm(dim)
            self.cross_norm_kv = nn.LayerNorm(dim)
            self.cross_attention = nn.MultiheadAttention(dim, config.n_heads, dropout=config.dropout, batch_first=True)
            self.fusion = FusionBlock(dim, config.n_heads, config.dropout)

    def image_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Backbone features as tokens ``(batch, n_tokens, feat_dim)``."""
        features = self.backbone(images)
        if features.ndim == 4:  # CNN: (B, C, H, W) -> (B, H*W, C)
            features = features.flatten(2).transpose(1, 2)
        return features

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Image embedding ``(batch, embed_dim)`` of normalised image tensors."""
        return self.image_projection(self.image_tokens(images).mean(dim=1))

    def encode_expression(self, expression: torch.Tensor) -> torch.Tensor:
        """Expression embedding ``(batch, embed_dim)`` of log-normalised expression."""
        return self.expression_projection(expression)

    def reconstruct(self, tokens: torch.Tensor, expression: torch.Tensor) -> torch.Tensor:
        """Rebuild the image embedding from masked image tokens and the expression."""
        projected = self.token_projection(tokens)
        keep = torch.bernoulli(torch.full_like(projected, self.config.mask_keep))
        query = self.cross_norm_q(projected * keep)
        genes = self.cross_norm_kv(self.gene_tokenizer(expression))
        fused = query + self.cross_attention(query, genes, genes, need_weights=False)[0]
        for _ in range(self.config.n_fusion_passes):
            fused = self.fusion(fused)
        return fused.mean(dim=1)

    def forward(self, images: torch.Tensor, expression: torch.Tensor) -> dict[str, torch.Tensor]:
        """Training forward pass: embeddings and losses of a batch of paired spots."""
        tokens = self.image_tokens(images)
        image_emb = self.image_projection(tokens.mean(dim=1))
        expr_emb = self.encode_expression(expression)
        l_con = contrastive_loss(image_emb, expr_emb, self.config.temperature)
        l_rec = None
        if self.config.reconstruction:
            # The target is detached: the branch must learn to rebuild the image embedding,
            # not move it towards whatever is easy to rebuild.
            l_rec = reconstruction_loss(self.reconstruct(tokens, expression), image_emb.detach())
        out = {"loss": combined_loss(l_con, l_rec), "contrastive": l_con, "image_emb": image_emb, "expr_emb": expr_emb}
        if l_rec is not None:
            out["reconstruction"] = l_rec
        return out


def create_model(config: ModelConfig) -> CMRCNet:
    """Create a CMRCNet from its configuration (timm-style entry point)."""
    return CMRCNet(config)
