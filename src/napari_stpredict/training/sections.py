"""Resolve the sections a training or evaluation config names: her2st ids or .h5ad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..io.patches import read_patches
from .data import SpotSet, attach_her2st_patches, her2st_section, spot_set

__all__ = ["load_section", "section_spots"]


def load_section(spec: str, her2st_root: str | None):
    """AnnData of one section: a her2st id ("C3", needs ``her2st_root``) or an ``.h5ad`` path."""
    if spec.endswith(".h5ad"):
        from ..io.st_data import read_st_h5ad

        return read_st_h5ad(spec)
    if her2st_root is None:
        raise ValueError(f"section {spec!r} looks like a her2st id but no her2st folder is configured (data.her2st)")
    return her2st_section(str(her2st_root), spec)


def _image_of(adata) -> tuple[str | None, float | None]:
    lib = next(iter(adata.uns.get("spatial", {}).values()), {})
    path = lib.get("metadata", {}).get("image_path")
    mpp = lib.get("scalefactors", {}).get("mpp_fullres")
    return path, mpp


def section_spots(
    spec: str,
    her2st_root: str | None,
    genes: list[str],
    *,
    patch_um: float | None = None,
    input_px: int | None = None,
    cache_dir: Path | None = None,
) -> SpotSet:
    """Spots of a section with expression of ``genes``; with patches when ``patch_um`` is given."""
    adata = load_section(spec, her2st_root)
    spots = spot_set(adata, genes)
    if patch_um is None:
        return spots
    if not spec.endswith(".h5ad"):
        return attach_her2st_patches(spots, her2st_root, spec, patch_um, input_px, cache_dir)
    image, mpp = _image_of(adata)
    if image is None or mpp is None:
        raise ValueError(
            f"{spec}: training needs uns['spatial'][library]['metadata']['image_path'] and "
            "scalefactors['mpp_fullres'] (stpredict convert --image sets them)"
        )
    from ..io.slide import open_slide

    with open_slide(image, mpp=mpp) as slide:
        spots.patches = read_patches(slide, spots.xy, patch_um, input_px)
    return spots


def available_genes(specs: list[str], her2st_root: str | None) -> set[str]:
    """Genes present in every listed section."""
    genes = None
    for spec in specs:
        names = set(load_section(spec, her2st_root).var_names)
        genes = names if genes is None else genes & names
    return genes or set()


def patients_of(specs: list[str], her2st_root: str | None) -> set[str]:
    """Patient ids of the listed sections."""
    return {str(p) for spec in specs for p in np.unique(load_section(spec, her2st_root).obs["patient"].astype(str))}
