"""Model cards: what a checkpoint predicts and how well, readable without torch.

A checkpoint (``model.pt``) needs torch to read. Most of what a user asks before a slide
is predicted does not: the gene list, the per-gene held-out accuracy, the input contract
(patch µm), the marker panel, the evaluation it shipped with. `write_card` stores those
beside the checkpoint, as ``<checkpoint>.card.json`` with the checkpoint's SHA-1, every
time a checkpoint is written (`save_checkpoint`, ``scripts/ship_model.py``). `read_card`
returns the card only when that hash still matches the file, so a replaced or edited
checkpoint is never described by an old card (the caller then loads the checkpoint).

`napari_stpredict.model.lazy.LazyModel` answers from the card and loads the network on
the first use of anything else.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import IOContract, RetrievalSettings, from_dict

__all__ = [
    "CARD_FORMAT",
    "CARD_SUFFIX",
    "DEFAULT_CHECKPOINT",
    "ModelCard",
    "card_path",
    "default_model_path",
    "read_card",
    "write_card",
]

CARD_FORMAT = "napari-stpredict-model-card"
CARD_SUFFIX = ".card.json"
DEFAULT_CHECKPOINT = "cmrcnet_her2st.pt"
#: Provenance entries left out of the card: long training curves, not needed before loading.
_LEFT_OUT = ("history",)


def default_model_path() -> Path:
    """Path of the model shipped inside the package."""
    return Path(__file__).resolve().parent / "weights" / DEFAULT_CHECKPOINT


def card_path(checkpoint: str | Path) -> Path:
    """Where the card of ``checkpoint`` lives: ``<checkpoint>.card.json`` beside it."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.name + CARD_SUFFIX)


@dataclass(frozen=True)
class ModelCard:
    """The torch-free description of one checkpoint file.

    Attributes
    ----------
    path : Path
        The checkpoint the card describes.
    sha1 : str
        The checkpoint file's SHA-1 when the card was written.
    genes : list of str
        Predicted genes, in the model's order.
    io : IOContract
        Patch size, input pixels, normalisation and expression transform.
    provenance, evaluation : dict
        As in the checkpoint (the training curves left out).
    retrieval : RetrievalSettings
        The top-k, spatial context and adaptation the model is used with by default.
    """

    path: Path
    sha1: str
    genes: list[str]
    io: IOContract
    provenance: dict[str, Any] = field(default_factory=dict)
    evaluation: dict[str, Any] = field(default_factory=dict)
    retrieval: RetrievalSettings = field(default_factory=RetrievalSettings)

    @property
    def source(self) -> str:
        """The checkpoint's file name (as `STModel.source`)."""
        return self.path.name


def _plain(value: Any) -> Any:
    """``value`` with only JSON's kinds kept: tensors and other objects become None."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return None


def write_card(checkpoint: str | Path, payload: dict[str, Any]) -> Path:
    """Write the card of the checkpoint file ``checkpoint`` whose contents are ``payload``
    (the dict `save_checkpoint` saved), atomically; returns the card's path."""
    from ..io.atomic import atomic_path
    from ..io.fingerprint import file_sha1

    checkpoint = Path(checkpoint)
    provenance = {k: v for k, v in (payload.get("provenance") or {}).items() if k not in _LEFT_OUT}
    card = {
        "format": CARD_FORMAT,
        "checkpoint": checkpoint.name,
        "sha1": file_sha1(checkpoint),
        "io": _plain(payload["io"]),
        "provenance": _plain(provenance),
        "evaluation": _plain(payload.get("evaluation") or {}),
        "retrieval": _plain(payload.get("retrieval") or {}),
    }
    target = card_path(checkpoint)
    with atomic_path(target) as tmp:
        Path(tmp).write_text(json.dumps(card, indent=1, ensure_ascii=False), encoding="utf-8")
    return target


def read_card(checkpoint: str | Path) -> ModelCard | None:
    """The card of ``checkpoint``, or None when it is missing, unreadable, or written for
    other contents of the file (its SHA-1 differs): the caller then loads the checkpoint."""
    from ..io.fingerprint import file_sha1

    checkpoint = Path(checkpoint)
    try:
        data = json.loads(card_path(checkpoint).read_text(encoding="utf-8"))
        if not isinstance(data, dict) or data.get("format") != CARD_FORMAT:
            return None
        if data.get("sha1") != file_sha1(checkpoint):
            return None
        io = from_dict(IOContract, data["io"])
        genes = list(io.genes)
        if not genes or not all(isinstance(g, str) for g in genes):
            return None
        return ModelCard(
            path=checkpoint,
            sha1=data["sha1"],
            genes=genes,
            io=io,
            provenance=dict(data.get("provenance") or {}),
            evaluation=dict(data.get("evaluation") or {}),
            retrieval=from_dict(RetrievalSettings, data.get("retrieval") or {}),
        )
    except (OSError, ValueError, TypeError, KeyError):
        return None
