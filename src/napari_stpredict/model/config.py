"""Typed configuration of the model and of its input/output contract."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

__all__ = ["ModelConfig", "IOContract", "RetrievalSettings", "from_dict"]


@dataclass
class ModelConfig:
    """Architecture of a CMRCNet model.

    Attributes
    ----------
    backbone : str
        A timm model name (e.g. "resnet10t", "resnet18", "vit_small_patch16_224").
    backbone_weights : str or None
        A local weights file for the backbone (e.g. a pathology foundation model);
        None trains from scratch. Only used when the model is first created.
    n_genes : int
        Number of predicted genes (set from the gene list).
    embed_dim : int
        Size of the shared image/expression embedding (paper: 256).
    dropout : float
        Dropout in the projection heads.
    reconstruction : bool
        Train the cross-modal mask reconstruction branch (paper: True); False is the
        contrastive-only (BLEEP) setting.
    n_gene_tokens : int
        Tokens the expression is turned into for cross-attention (paper: 8).
    mask_keep : float
        Probability of keeping each element of the image tokens (paper: 0.5).
    n_heads : int
        Attention heads in the reconstruction branch (paper: 4).
    n_fusion_passes : int
        How often the shared fusion block is applied (paper: 2).
    temperature : float
        Contrastive temperature (paper: 1.0).
    """

    backbone: str = "resnet10t"
    backbone_weights: str | None = None
    n_genes: int = 0
    embed_dim: int = 256
    dropout: float = 0.1
    reconstruction: bool = True
    n_gene_tokens: int = 8
    mask_keep: float = 0.5
    n_heads: int = 4
    n_fusion_passes: int = 2
    temperature: float = 1.0
    img_size: int = 112


@dataclass
class IOContract:
    """What the model expects and returns; travels with every checkpoint.

    Attributes
    ----------
    patch_um : float
        Physical width of a patch (paper: 112 µm; her2st spots are 100 µm wide).
    input_px : int
        Patch side in pixels fed to the network; the read resolution is
        ``patch_um / input_px`` µm per pixel.
    mean, std : tuple of float
        Per-channel normalisation of RGB values scaled to 0-1.
    genes : list of str
        Predicted genes, in output order.
    expression_transform : str
        "log1p_cp10k": log(1 + counts / total counts of the spot * 10,000).
    """

    patch_um: float = 112.0
    input_px: int = 112
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    genes: list[str] = field(default_factory=list)
    expression_transform: str = "log1p_cp10k"

    @property
    def mpp(self) -> float:
        """µm per pixel the patches are read at."""
        return self.patch_um / self.input_px


@dataclass
class RetrievalSettings:
    """How a model turns image embeddings into expression; travels with the checkpoint.

    Attributes
    ----------
    top_k : int
        Reference spots averaged by the retrieval (the paper: 50).
    context_sigma_um : float
        Spatial context (`napari_stpredict.inference.context`): each spot's prediction
        is averaged with its 8 neighbouring patches' with Gaussian weights of this width
        in µm; 0 = none. Checkpoints written before these settings existed read as
        ``top_k=50``, no context, which is how they were evaluated.
    adaptation : {"none", "centre", "standardise"}
        Per-slide adaptation of the image features before retrieval
        (`napari_stpredict.model.adaptation`). Checkpoints written before it read as
        ``"none"``.
    """

    top_k: int = 50
    context_sigma_um: float = 0.0
    adaptation: str = "none"


def from_dict(cls, data: dict[str, Any]):
    """Build a config dataclass from a dict, rejecting unknown keys with their names."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys: {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    values = dict(data)
    if "mean" in values:
        values["mean"] = tuple(values["mean"])
    if "std" in values:
        values["std"] = tuple(values["std"])
    return cls(**values)


def to_dict(obj) -> dict[str, Any]:
    """Plain-dict form of a config dataclass (tuples become lists, for YAML/JSON)."""
    out = asdict(obj)
    for k, v in out.items():
        if isinstance(v, tuple):
            out[k] = list(v)
    return out
