"""Predicted spots as QuPath detections: one object per spot, with measurements.

QuPath (0.4 and later) imports the file with *File > Import objects from file* (or by
dropping it on the viewer); *Measure > Show measurement maps* then draws any of the
measurements as a heatmap over the slide, and *Measure > Show detection measurements*
lists them per spot. The conventions follow QuPath's own GeoJSON reader
(``qupath-core``, ``qupath.lib.io.PathObjectTypeAdapters``):

- a ``FeatureCollection``; each feature's ``id`` a UUID (QuPath 0.4+ keeps it as the
  object's id), its geometry a polygon in level-0 pixels, origin at the top-left of the
  full-resolution image (the spot's square: the grid cell the map draws);
- ``properties.objectType`` ``"detection"``; ``properties.measurements`` an object of
  name -> number (the 0.4+ form; 0.3 wrote a list of ``{name, value}``, which 0.4+ also
  reads); numbers only: a spot without a value leaves that measurement out (QuPath
  shows it as NaN);
- ``properties.classification`` ``{"name": "Tumor", "color": [200, 0, 0]}`` (QuPath's
  built-in tumour class) for spots called tumour; other spots are unclassified;
- ``properties.isLocked`` true, so a spot is not dragged off its place by a stray click.

The collection's own ``properties`` (a foreign member QuPath ignores) hold the
provenance: model, slide, units, threshold and "research use only".
"""

from __future__ import annotations

import json
import math
import uuid
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["QUPATH_FILE", "TUMOUR_CLASS", "write_qupath_detections"]

QUPATH_FILE = "qupath_detections.geojson"
#: QuPath's built-in class for tumour, with its default colour.
TUMOUR_CLASS = {"name": "Tumor", "color": [200, 0, 0]}
#: The per-spot measurements besides the genes: (name in QuPath, ``obs`` column).
SPOT_MEASUREMENTS = (
    ("Confidence", "confidence"),
    ("Tumour score", "tumour_score"),
    ("Out-of-domain distance", "domain_distance"),
    ("Out of domain", "out_of_domain"),
)


def _number(value: Any) -> float | None:
    value = float(value)
    return round(value, 4) if math.isfinite(value) else None


def write_qupath_detections(prediction, genes: list[str], path: str | Path, *, threshold=None) -> Path:
    """Write the prediction's spots as QuPath detections (atomically).

    Parameters
    ----------
    prediction : Prediction
        With `napari_stpredict.inference.tumor.add_tumour_columns` applied for the
        tumour score and call (without them the spots carry no tumour result).
    genes : list of str
        Genes written as measurements, named as the model names them.
    path : path
        The ``.geojson`` file.
    threshold : float, optional
        The tumour threshold used, recorded in the provenance.

    Returns
    -------
    Path
        The file written.
    """
    from ..io.atomic import atomic_path

    path = Path(path)
    obs = prediction.adata.obs
    meta = prediction.meta
    half_x, half_y = (s / 2 for s in prediction.grid.stride)
    xs, ys = obs["x"].to_numpy(float), obs["y"].to_numpy(float)
    values = {gene: prediction.expression(gene) for gene in genes}
    extra = [(name, obs[column].to_numpy(float)) for name, column in SPOT_MEASUREMENTS if column in obs]
    tumour = obs["tumour"].to_numpy(bool) if "tumour" in obs else np.zeros(len(obs), bool)
    # Stable ids: the same spot of the same prediction gets the same UUID on a rerun.
    namespace = uuid.uuid5(uuid.NAMESPACE_URL, f"napari-stpredict:{meta.cache_key or meta.slide.name}")
    provenance = {
        "software": "napari-stpredict",
        "note": "Research use only; not for diagnosis. Predicted from the H&E image, not measured.",
        "model": meta.model.name,
        "slide": meta.slide.name,
        "coordinates": "level-0 pixels of the slide, origin at its top-left corner",
        "spot_size_um": meta.stride_um,
        "units": dict.fromkeys(genes, "log1p(counts per 10,000), predicted")
        | {
            "Confidence": "cosine similarity to the reference bank",
            "Tumour score": "marker-panel score (tumour above the threshold)",
            "Out-of-domain distance": "distance to the training images (above 1: out of domain)",
            "Out of domain": "1 = unlike the training data (never called tumour)",
        },
        "tumour_threshold": threshold,
        "spots": len(obs),
    }
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        # Written feature by feature: a 24,000-spot slide never holds its whole text in memory.
        fh.write('{"type": "FeatureCollection", "properties": ')
        fh.write(json.dumps(provenance, ensure_ascii=False))
        fh.write(', "features": [\n')
        for i in range(len(obs)):
            x, y = xs[i], ys[i]
            ring = [
                [round(x - half_x, 2), round(y - half_y, 2)],
                [round(x + half_x, 2), round(y - half_y, 2)],
                [round(x + half_x, 2), round(y + half_y, 2)],
                [round(x - half_x, 2), round(y + half_y, 2)],
                [round(x - half_x, 2), round(y - half_y, 2)],
            ]
            measurements = {gene: _number(v[i]) for gene, v in values.items()}
            measurements |= {name: _number(v[i]) for name, v in extra}
            properties: dict[str, Any] = {
                "objectType": "detection",
                "isLocked": True,
                "measurements": {k: v for k, v in measurements.items() if v is not None},
            }
            if tumour[i]:
                properties["classification"] = TUMOUR_CLASS
            feature = {
                "type": "Feature",
                "id": str(uuid.uuid5(namespace, str(i))),
                "geometry": {"type": "Polygon", "coordinates": [ring]},
                "properties": properties,
            }
            fh.write(("," if i else "") + json.dumps(feature, separators=(",", ":")) + "\n")
        fh.write("]}\n")
    return path
