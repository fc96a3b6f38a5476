"""One-file checkpoints: save, load and validate (the checkpoint contract, docs/ARCHITECTURE.md).

The file is a ``torch.save`` of plain containers and tensors, loaded with
``weights_only=True``: no pickled Python objects are executed. It holds the weights,
the architecture, the IO contract (patch µm, input px, normalisation, genes,
expression transform), the reference bank, the ridge head, training provenance, the
evaluation figures it shipped with, and a format version.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from ..errors import StPredictError
from ..io.atomic import atomic_path
from .card import write_card
from .config import IOContract, ModelConfig, RetrievalSettings, from_dict, to_dict

__all__ = ["CheckpointError", "save_checkpoint", "read_checkpoint", "FORMAT", "FORMAT_VERSION"]

FORMAT = "napari-stpredict-checkpoint"
FORMAT_VERSION = 1
_REQUIRED = ("format", "format_version", "model_config", "io", "state_dict", "bank", "provenance")


class CheckpointError(StPredictError, ValueError):
    """A checkpoint file is missing, of another format or version, or inconsistent."""


def save_checkpoint(
    path: str | Path,
    *,
    model,
    io: IOContract,
    bank_embeddings: torch.Tensor,
    bank_expression: torch.Tensor,
    ridge=None,
    provenance: dict[str, Any] | None = None,
    evaluation: dict[str, Any] | None = None,
    calibration: dict[str, Any] | None = None,
    retrieval: RetrievalSettings | None = None,
    half: bool = True,
) -> Path:
    """Write a model with its bank and contract to one file (atomically).

    Parameters
    ----------
    calibration : dict, optional
        Trust calibration from `napari_stpredict.training.calibration.compute_calibration`
        (out-of-domain reference and threshold, tumour-score standardisation and threshold).
    retrieval : RetrievalSettings, optional
        Top-k and spatial context the model was evaluated (and calibrated) with; the
        engine uses them by default. None stores the defaults.
    half : bool
        Store floating-point tensors as float16 (half the size; predictions change by
        far less than their error).
    """
    dtype = torch.float16 if half else torch.float32

    def pack(t: torch.Tensor) -> torch.Tensor:
        t = t.detach().cpu()
        return t.to(dtype) if t.is_floating_point() else t

    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_config": to_dict(model.config),
        "io": to_dict(io),
        "state_dict": {k: pack(v) for k, v in model.state_dict().items()},
        "bank": {"embeddings": pack(bank_embeddings), "expression": pack(bank_expression)},
        "ridge": None
        if ridge is None
        else {"weight": pack(ridge.weight), "bias": pack(ridge.bias), "alpha": float(ridge.alpha)},
        "provenance": provenance or {},
        "evaluation": evaluation or {},
        "retrieval": to_dict(retrieval or RetrievalSettings()),
    }
    if calibration is not None:
        payload["calibration"] = {
            **calibration,
            "domain": {**calibration["domain"], "reference": pack(calibration["domain"]["reference"])},
            "tumor": {
                **calibration["tumor"],
                "gene_mean": calibration["tumor"]["gene_mean"].detach().cpu().float(),
                "gene_std": calibration["tumor"]["gene_std"].detach().cpu().float(),
            },
        }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    write_card(path, payload)  # what commands without torch read (gene list, accuracy)
    return path


def _fail(path: Path, message: str) -> CheckpointError:
    return CheckpointError(f"checkpoint {path}: {message}")


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load and validate a checkpoint file; return its validated contents.

    Raises
    ------
    CheckpointError
        Naming the file and what is wrong: not found, not a checkpoint, another format
        version, missing keys, gene list inconsistent with the weights or the bank,
        NaN/inf values.
    """
    path = Path(path)
    if not path.exists():
        raise _fail(path, "file not found")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds here
        import pickle

        if isinstance(exc, pickle.UnpicklingError) and "Weights only load failed" in str(exc):
            reason = (
                "it is not a torch file, or it holds pickled Python objects, which are refused for "
                "safety (a napari-stpredict checkpoint holds only tensors and plain values)"
            )
        else:
            reason = f"{type(exc).__name__}: {exc}"
        raise _fail(path, f"not a readable napari-stpredict checkpoint: {reason}") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise _fail(path, f"not a napari-stpredict checkpoint (no format tag {FORMAT!r})")
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        raise _fail(
            path,
            f"format version {version!r} is not supported (this version reads {FORMAT_VERSION}); "
            "update napari-stpredict or re-export the model",
        )
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise _fail(path, f"missing keys: {', '.join(missing)}")
    try:
        config = from_dict(ModelConfig, data["model_config"])
        io = from_dict(IOContract, data["io"])
    except (TypeError, ValueError) as exc:
        raise _fail(path, f"bad configuration: {exc}") from exc
    _check_values(path, config, io)
    genes = list(io.genes)
    if len(genes) != config.n_genes:
        raise _fail(path, f"gene list has {len(genes)} genes but the model predicts {config.n_genes}")
    if len(set(genes)) != len(genes):
        raise _fail(path, "gene list has duplicates")
    bank = data["bank"]
    if not isinstance(bank, dict) or "embeddings" not in bank or "expression" not in bank:
        raise _fail(path, "bank must hold 'embeddings' and 'expression'")
    if bank["expression"].ndim != 2 or bank["expression"].shape[1] != len(genes):
        raise _fail(
            path, f"bank expression has shape {tuple(bank['expression'].shape)}, expected (spots, {len(genes)})"
        )
    if bank["embeddings"].shape != (bank["expression"].shape[0], config.embed_dim):
        raise _fail(
            path,
            f"bank embeddings have shape {tuple(bank['embeddings'].shape)}, expected "
            f"({bank['expression'].shape[0]}, {config.embed_dim})",
        )
    ridge = data.get("ridge")
    if ridge is not None and tuple(ridge["weight"].shape) != (config.embed_dim, len(genes)):
        raise _fail(
            path, f"ridge head has shape {tuple(ridge['weight'].shape)}, expected ({config.embed_dim}, {len(genes)})"
        )
    tensors = {f"state_dict.{k}": v for k, v in data["state_dict"].items()}
    tensors.update({f"bank.{k}": v for k, v in bank.items()})
    if ridge is not None:
        tensors.update({"ridge.weight": ridge["weight"], "ridge.bias": ridge["bias"]})
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise _fail(path, f"{name} is not a tensor")
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise _fail(path, f"{name} holds NaN or infinite values")
    if data.get("calibration"):
        _check_calibration(path, data["calibration"], len(genes))
    data["retrieval"] = _retrieval_settings(path, data.get("retrieval"))
    data["model_config"], data["io"] = config, io
    return data


#: Bounds that every real model sits well inside; values beyond them would allocate
#: tens of GB or run for hours (a 1 µm patch is 1/100 of a her2st spot).
_PATCH_UM = (10.0, 2000.0)
_INPUT_PX = (16, 1024)
_EMBED_DIM = (8, 4096)


def _check_values(path: Path, config: ModelConfig, io: IOContract) -> None:
    """Refuse architecture and IO values that pass type checks but cannot be right."""

    def number(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    if not (number(io.patch_um) and _PATCH_UM[0] <= io.patch_um <= _PATCH_UM[1]):
        raise _fail(path, f"io.patch_um must be between {_PATCH_UM[0]:g} and {_PATCH_UM[1]:g} µm, got {io.patch_um!r}")
    if not (isinstance(io.input_px, int) and _INPUT_PX[0] <= io.input_px <= _INPUT_PX[1]):
        raise _fail(path, f"io.input_px must be an integer from {_INPUT_PX[0]} to {_INPUT_PX[1]}, got {io.input_px!r}")
    if not (isinstance(config.embed_dim, int) and _EMBED_DIM[0] <= config.embed_dim <= _EMBED_DIM[1]):
        raise _fail(
            path,
            f"model_config.embed_dim must be an integer from {_EMBED_DIM[0]} to {_EMBED_DIM[1]}, "
            f"got {config.embed_dim!r}",
        )
    for name in ("mean", "std"):
        values = getattr(io, name)
        if len(values) != 3 or not all(number(v) for v in values):
            raise _fail(path, f"io.{name} must be 3 finite numbers (R, G, B), got {values!r}")
    if not all(v > 0 for v in io.std):
        raise _fail(path, f"io.std must be positive for every channel, got {io.std!r}")
    backbone = str(config.backbone)
    if not backbone or any(c in backbone for c in ":/\\"):
        # timm resolves "hf-hub:org/name" and "org/name" from a model hub, over the network,
        # even without weights; a checkpoint holds all its weights and needs no download.
        raise _fail(
            path,
            f"model_config.backbone must be a plain timm architecture name, got {backbone!r} "
            "(hub references are refused: nothing is downloaded at run time)",
        )


def _retrieval_settings(path: Path, stored: Any) -> RetrievalSettings:
    """The checkpoint's retrieval settings (defaults when it predates them), checked."""
    if stored is None:
        return RetrievalSettings()
    try:
        settings = from_dict(RetrievalSettings, stored) if isinstance(stored, dict) else None
    except (TypeError, ValueError) as exc:
        raise _fail(path, f"bad retrieval settings: {exc}") from exc
    if settings is None:
        raise _fail(path, f"retrieval must be a dict of settings, got {type(stored).__name__}")
    top_k = settings.top_k
    if not (isinstance(top_k, int) and not isinstance(top_k, bool) and top_k >= 1):
        raise _fail(path, f"retrieval.top_k must be a positive integer, got {top_k!r}")
    sigma = settings.context_sigma_um
    if not (isinstance(sigma, (int, float)) and not isinstance(sigma, bool) and math.isfinite(sigma) and sigma >= 0):
        raise _fail(path, f"retrieval.context_sigma_um must be 0 (no context) or a positive number, got {sigma!r}")
    from .adaptation import ADAPTATION_MODES

    if settings.adaptation not in ADAPTATION_MODES:
        raise _fail(
            path, f"retrieval.adaptation must be one of {', '.join(ADAPTATION_MODES)}, got {settings.adaptation!r}"
        )
    return settings


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def _check_calibration(path: Path, cal: Any, n_genes: int) -> None:
    """Validate the optional trust calibration (see `save_checkpoint`)."""
    if not isinstance(cal, dict) or not isinstance(cal.get("domain"), dict) or not isinstance(cal.get("tumor"), dict):
        raise _fail(path, "calibration must hold 'domain' and 'tumor'")
    domain, tumor = cal["domain"], cal["tumor"]
    ref = domain.get("reference")
    if not isinstance(ref, torch.Tensor) or ref.ndim != 2 or ref.shape[0] < 1:
        raise _fail(path, "calibration.domain.reference must be a (spots, features) tensor")
    for key in ("threshold", "partly_share", "out_share"):
        if not _positive(domain.get(key)):
            raise _fail(path, f"calibration.domain.{key} must be a positive number, got {domain.get(key)!r}")
    if not (isinstance(domain.get("k"), int) and domain["k"] >= 1):
        raise _fail(path, f"calibration.domain.k must be a positive integer, got {domain.get('k')!r}")
    for key in ("gene_mean", "gene_std"):
        t = tumor.get(key)
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != (n_genes,):
            raise _fail(path, f"calibration.tumor.{key} must be a tensor of {n_genes} values (one per gene)")
    tensors = {
        "calibration.domain.reference": ref,
        "calibration.tumor.gene_mean": tumor["gene_mean"],
        "calibration.tumor.gene_std": tumor["gene_std"],
    }
    for name, t in tensors.items():
        if not torch.isfinite(t).all():
            raise _fail(path, f"{name} holds NaN or infinite values")
    if not (tumor["gene_std"] > 0).all():
        raise _fail(path, "calibration.tumor.gene_std must be positive for every gene")
    threshold = tumor.get("threshold")
    if threshold is not None and not (isinstance(threshold, (int, float)) and math.isfinite(threshold)):
        raise _fail(path, f"calibration.tumor.threshold must be a number or None, got {threshold!r}")
    if not isinstance(tumor.get("markers"), list):
        raise _fail(path, "calibration.tumor.markers must be a list of genes")
    if threshold is not None and not tumor["markers"]:
        raise _fail(path, "calibration.tumor has a threshold but no marker panel it belongs to")
