"""A model known by its card until its network is needed (`open_model`).

`LazyModel` answers what the card holds and loads the network (`load_model`) on the first
use of anything else: ``stpredict genes`` never imports torch, and a cached ``predict``
rerun writes its outputs without loading the model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .card import ModelCard, default_model_path, read_card

__all__ = ["LazyModel", "open_model"]


class LazyModel:
    """A model known by its card until its network is needed.

    ``genes``, ``io``, ``provenance``, ``evaluation``, ``retrieval`` and ``source`` come
    from the card; any other attribute loads the checkpoint (`load_model`, which imports
    torch) once and is the loaded `STModel`'s.

    Parameters
    ----------
    card : ModelCard
        From `read_card` (checked against the checkpoint).
    device : str
        Passed to `load_model` when the network is needed.
    """

    _FROM_CARD = frozenset({"genes", "io", "provenance", "evaluation", "retrieval", "source"})

    def __init__(self, card: ModelCard, device: str = "auto") -> None:
        self._card = card
        self._device = device
        self._model = None

    @property
    def card(self) -> ModelCard:
        """The card the model is known by."""
        return self._card

    @property
    def loaded(self) -> bool:
        """Whether the network has been loaded."""
        return self._model is not None

    def load(self):
        """The `STModel` (loaded on the first call)."""
        if self._model is None:
            from .stmodel import load_model

            self._model = load_model(self._card.path, device=self._device)
        return self._model

    def __getattr__(self, name: str) -> Any:
        # Only reached for names not found normally (the private ones are set in __init__).
        if name.startswith("_"):
            raise AttributeError(name)
        if name in self._FROM_CARD and self._model is None:
            return getattr(self._card, name)
        return getattr(self.load(), name)

    def __repr__(self) -> str:
        if self._model is not None:
            return repr(self._model)
        return f"<LazyModel {self._card.source}, {len(self._card.genes)} genes, not loaded>"


def open_model(path: str | Path | None = None, device: str = "auto"):
    """The model at ``path`` (default: the bundled one), loaded only when it must be.

    With a card that matches the checkpoint and ``device`` "auto" or "cpu": a `LazyModel`
    (no torch until the network runs). Otherwise the loaded `STModel`: a checkpoint
    without a valid card is read now, so that a damaged file is reported before any slide
    is, and a named device (``cuda:1``) is checked now.

    Raises
    ------
    CheckpointError
        When the checkpoint must be read and cannot be.
    """
    path = Path(path) if path is not None else default_model_path()
    card = read_card(path) if device in ("auto", "cpu") else None
    if card is not None:
        return LazyModel(card, device=device)
    from .stmodel import load_model

    return load_model(path, device=device)
