"""The CMRCNet model, its losses, predictors, checkpoints and model cards.

Names are imported on first use (PEP 562), so that the parts that need no torch (the
model card, the configuration dataclasses, per-gene accuracy) can be read by commands
that never run the network: ``stpredict genes`` and a cached ``predict`` start in a
second. Touching a name that needs the network (`load_model`, `CMRCNet`, ...) imports torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_HOMES = {
    "CheckpointError": ".checkpoint",
    "read_checkpoint": ".checkpoint",
    "save_checkpoint": ".checkpoint",
    "CMRCNet": ".cmrcnet",
    "create_model": ".cmrcnet",
    "IOContract": ".config",
    "ModelConfig": ".config",
    "RetrievalSettings": ".config",
    "ModelCard": ".card",
    "LazyModel": ".lazy",
    "read_card": ".card",
    "write_card": ".card",
    "open_model": ".lazy",
    "card_path": ".card",
    "ReferenceBank": ".predictor",
    "RidgeHead": ".predictor",
    "fit_ridge": ".predictor",
    "retrieve": ".predictor",
    "STModel": ".stmodel",
    "load_model": ".stmodel",
    "select_device": ".stmodel",
    "default_model_path": ".card",
}

__all__ = [
    "card_path",
    "CheckpointError",
    "CMRCNet",
    "create_model",
    "default_model_path",
    "fit_ridge",
    "IOContract",
    "LazyModel",
    "load_model",
    "ModelCard",
    "ModelConfig",
    "open_model",
    "read_card",
    "read_checkpoint",
    "ReferenceBank",
    "RetrievalSettings",
    "retrieve",
    "RidgeHead",
    "save_checkpoint",
    "select_device",
    "STModel",
    "write_card",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home, __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from .card import ModelCard, card_path, default_model_path, read_card, write_card
    from .checkpoint import CheckpointError, read_checkpoint, save_checkpoint
    from .cmrcnet import CMRCNet, create_model
    from .config import IOContract, ModelConfig, RetrievalSettings
    from .lazy import LazyModel, open_model
    from .predictor import ReferenceBank, RidgeHead, fit_ridge, retrieve
    from .stmodel import STModel, load_model, select_device
