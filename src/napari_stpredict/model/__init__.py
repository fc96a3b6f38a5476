"""The CMRCNet model, its losses, predictors and checkpoints.

Importing this package imports torch; the top-level ``napari_stpredict`` does not.
"""

from .checkpoint import CheckpointError, read_checkpoint, save_checkpoint
from .cmrcnet import CMRCNet, create_model
from .config import IOContract, ModelConfig, RetrievalSettings
from .predictor import ReferenceBank, RidgeHead, fit_ridge, retrieve
from .stmodel import STModel, default_model_path, load_model, select_device

__all__ = [
    "CMRCNet",
    "CheckpointError",
    "IOContract",
    "ModelConfig",
    "ReferenceBank",
    "RetrievalSettings",
    "RidgeHead",
    "STModel",
    "create_model",
    "default_model_path",
    "fit_ridge",
    "load_model",
    "read_checkpoint",
    "retrieve",
    "save_checkpoint",
    "select_device",
]
