"""Regions of a slide given by the user: a level-0 box or a GeoJSON file of polygons.

QuPath exports its annotations as GeoJSON (a FeatureCollection, or a bare list of
features); each Polygon's and MultiPolygon's outer rings become the region, in level-0
pixels. Errors name the option the text came from (``--roi`` on the command line).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

__all__ = ["parse_roi", "read_polygons"]


def parse_roi(text: str | None, option: str = "--roi") -> list | None:
    """A region: a box ``x0,y0,x1,y1`` in level-0 pixels, or a GeoJSON file of polygons.

    Raises
    ------
    ValueError
        Naming ``option`` and the file, for a missing, empty, unreadable or polygon-less
        file and for a malformed box.

    Returns
    -------
    list or None
        Polygons as lists of ``[x, y]`` level-0 points (a box is one rectangle); None for
        no region.
    """
    if text is None:
        return None
    path = Path(text)
    if path.suffix.lower() in (".json", ".geojson"):
        return read_polygons(path, option)
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError as exc:
        raise ValueError(f"{option} must be x0,y0,x1,y1 in level-0 pixels or a .geojson file, got {text!r}") from exc
    if (
        len(values) != 4
        or not all(math.isfinite(v) for v in values)
        or values[2] <= values[0]
        or values[3] <= values[1]
    ):
        raise ValueError(f"{option} must be x0,y0,x1,y1 with x1 > x0 and y1 > y0, got {text!r}")
    x0, y0, x1, y1 = values
    return [[[x0, y0], [x1, y0], [x1, y1], [x0, y1]]]


def read_polygons(path: Path, option: str = "--roi") -> list:
    """Outer rings of every Polygon/MultiPolygon in a GeoJSON file (QuPath's export too).

    Raises
    ------
    ValueError
        Naming ``option`` and the file: missing, unreadable, a coordinate that is not a
        number, malformed coordinates, or no polygon of at least 3 points.
    """
    if not path.is_file():
        raise ValueError(f"{option} {path}: file not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{option} {path}: not a readable GeoJSON file ({exc})") from exc
    if isinstance(data, dict):
        features = data.get("features", [data]) if data.get("type") == "FeatureCollection" else [data]
    elif isinstance(data, list):  # QuPath writes a bare list of features
        features = data
    else:
        features = []
    polygons = []
    for feature in features:
        geom = feature.get("geometry", feature) if isinstance(feature, dict) else None
        if not isinstance(geom, dict):
            continue  # "geometry": null is valid GeoJSON for a feature without a shape
        coords: Any = geom.get("coordinates")  # malformed shapes raise below, caught
        try:
            if geom.get("type") == "Polygon":
                rings = [coords[0]]
            elif geom.get("type") == "MultiPolygon":
                rings = [poly[0] for poly in coords]
            else:
                continue
            for ring in rings:
                ring = [[float(x), float(y)] for x, y, *_ in ring]
                bad = next((pt for pt in ring if not all(math.isfinite(v) for v in pt)), None)
                if bad is not None:
                    kind = geom.get("type")
                    raise ValueError(f"{option} {path}: a {kind} has a coordinate that is not a number: {bad}")
                if len(ring) >= 3:
                    polygons.append(ring)
        except (TypeError, ValueError, IndexError) as exc:
            raise ValueError(f"{option} {path}: a {geom.get('type')} has malformed coordinates ({exc})") from exc
    if not polygons:
        raise ValueError(f"{option} {path}: no Polygon or MultiPolygon with at least 3 points in the file")
    return polygons
