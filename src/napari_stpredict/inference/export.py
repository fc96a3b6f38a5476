"""Write a prediction's files: table, per-gene GeoTIFFs, tumour mask GeoTIFF and GeoJSON, overview."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..io.atomic import atomic_path
from ..io.geotiff import map_tags, mask_tags, write_geojson, write_geotiff
from ..vocabulary import safe_filename
from .prediction import UNITS, Prediction
from .tumor import TumorMask, mask_polygons, polygons_geojson

__all__ = [
    "export_gene_geotiff",
    "export_tumor",
    "export_tumor_geojson",
    "export_overview",
    "safe_filename",
    "save_spot_table",
]


def _provenance(prediction: Prediction) -> dict[str, Any]:
    """What every raster's tags say of the prediction (as napari's layers carry it)."""
    meta = prediction.meta
    return {
        "slide": meta.slide.name,
        "model": meta.model.name,
        "mpp": meta.mpp,
        "patch_um": meta.patch_um,
        "stride_um": meta.stride_um,
        "domain": meta.trust.domain.summary(),
    }


def export_gene_geotiff(prediction: Prediction, gene: str, path: Path) -> Path:
    """float32 GeoTIFF of one gene's predicted expression (NaN outside tissue)."""
    heat = prediction.heatmap(gene)
    tags = map_tags(_provenance(prediction), gene=heat.name, units=UNITS)
    return write_geotiff(
        path, heat.raster, l0_origin=heat.l0_origin, l0_stride=heat.l0_stride, metadata=tags, nodata=np.nan
    )


def export_tumor(prediction: Prediction, mask: TumorMask, tif_path: Path, geojson_path: Path) -> None:
    """uint8 tumour-mask GeoTIFF (1 tumour, 0 not) and its contours as GeoJSON (level-0 pixels)."""
    grid = prediction.grid
    tags = mask_tags(
        _provenance(prediction),
        markers=mask.markers,
        threshold=mask.threshold,
        automatic=mask.automatic,
        mode=mask.mode,
    )
    write_geotiff(tif_path, mask.raster, l0_origin=grid.origin, l0_stride=grid.stride, metadata=tags)
    export_tumor_geojson(prediction, mask, geojson_path)


def export_tumor_geojson(prediction: Prediction, mask: TumorMask, path: Path) -> Path:
    """Tumour contours (with holes) as a GeoJSON FeatureCollection in level-0 pixels (QuPath imports it)."""
    polygons = mask_polygons(mask.raster, prediction.grid.origin, prediction.grid.stride)
    return write_geojson(
        Path(path),
        polygons_geojson(
            polygons, properties={"markers": mask.markers, "threshold": mask.threshold, "threshold_mode": mask.mode}
        ),
    )


def export_overview(slide, prediction: Prediction, gene: str, mask: TumorMask | None, path: Path) -> Path:
    """PNG: thumbnail, heatmap of ``gene``, tumour contour, and a caption with the slide's
    trust verdicts (stain, out of domain) and the tumour threshold."""
    from PIL import Image

    from .colours import colour_limits, has_fixed_range
    from .overview import caption_image, overview_image
    from .trust import trust_lines

    heat = prediction.heatmap(gene)
    fixed = has_fixed_range(prediction)
    limits = colour_limits(prediction, heat.name, fixed=fixed)
    image = overview_image(slide, heat, None if mask is None else mask.raster, limits=limits)
    domain = prediction.trust.domain
    scale_bar = None
    if prediction.meta.mpp_x:
        um_per_px = prediction.meta.mpp_x * slide.dimensions[0] / image.shape[1]
        length_um = next(
            (v for v in (10000, 5000, 2000, 1000, 500, 200, 100) if v / um_per_px <= image.shape[1] / 4), 100
        )
        scale_bar = (length_um / um_per_px, f"{length_um / 1000:g} mm" if length_um >= 1000 else f"{length_um} µm")
    range_text = "its range over the model's training spots" if fixed else "the 2nd-98th percentile of this slide"
    lines = [
        f"{heat.name}: predicted {UNITS}; colours span {range_text}. Research use only.",
        f"Domain: {domain.verdict or 'unknown'}"
        + (f" ({domain.share_out:.0%} of spots unlike the training data)" if domain.share_out is not None else ""),
    ]
    if mask is not None:
        lines.append(
            f"Red contour: predicted tumour, {mask.fraction:.0%} of tissue, threshold {mask.describe()}"
            + (f"; {mask.note}" if mask.note else "")
        )
    warn = [line for line in trust_lines(prediction.meta) if not line.lower().startswith("in domain")]
    image = caption_image(
        image, lines, warnings=warn, colourbar=(*limits, f"{heat.name}, {UNITS}"), scale_bar=scale_bar
    )
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")
    return path


def save_spot_table(prediction: Prediction, path: str | Path) -> Path:
    """The spot table: ``.h5ad`` (the whole prediction) or ``.csv`` (spot centres in level-0
    pixels, grid cell, confidence, out-of-domain flag and every gene), written atomically."""
    import pandas as pd

    path = Path(path)
    if path.suffix.lower() != ".csv":
        return prediction.save(path if path.suffix.lower() == ".h5ad" else path.with_suffix(".h5ad"))
    obs = prediction.adata.obs
    expression = pd.DataFrame(np.asarray(prediction.adata.X), index=obs.index, columns=prediction.genes)
    from ..io.tables import write_csv

    return write_csv(pd.concat([obs, expression], axis=1), path, index_label="spot")
