"""Per-section adaptation in calibration and evaluation: the engine's per-slide rule
(`napari_stpredict.model.adaptation`) applied to each her2st or ``.h5ad`` section.

A section's statistics come from its own spots' patches (on ST arrays they cover the
tissue, as the engine's grid does on a slide); its neighbouring patches are adapted with
the same map, as the engine adapts every patch of a slide alike.
"""

from __future__ import annotations

import numpy as np

__all__ = ["section_adaptations", "adapted_embeddings"]


def section_adaptations(model, spots, features=None) -> dict:
    """Each section's `SlideAdaptation` (None where the model does not adapt).

    Parameters
    ----------
    model : STModel
    spots : SpotSet
        Spots with patches and ``section``.
    features : torch.Tensor, optional
        The spots' raw pooled features, if already computed (`STModel.features_many`).
    """
    sections = list(dict.fromkeys(np.asarray(spots.section).tolist()))
    if model.retrieval.adaptation == "none":
        return dict.fromkeys(sections)
    if model.training_feature_stats is None:
        raise ValueError(
            f"model {model.source or '(in training)'}: adaptation {model.retrieval.adaptation!r} needs the "
            "training images' feature statistics (a calibrated checkpoint)"
        )
    if features is None:
        features = model.features_many(spots.patches)
    out = {}
    for section in sections:
        inside = np.asarray(spots.section) == section
        out[section] = model.slide_adaptation(features[inside])
    return out


def adapted_embeddings(model, features, section_of_rows: np.ndarray, adaptations: dict):
    """Embeddings of raw ``features`` rows, each adapted with its section's map."""
    import torch

    out = torch.empty((len(features), model.config.embed_dim), dtype=torch.float32, device=model.device)
    section_of_rows = np.asarray(section_of_rows)
    for section, adaptation in adaptations.items():
        rows = np.flatnonzero(section_of_rows == section)
        if len(rows):
            index = torch.from_numpy(rows).to(model.device)
            out[index] = model.embed_features(features[index.to(features.device)], adaptation=adaptation)
    return out
