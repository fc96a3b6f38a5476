"""Resolve the sections a training or evaluation config names: her2st ids or .h5ad files."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from ..io.patches import read_patches
from .data import SpotSet, attach_her2st_patches, her2st_section, spot_set

__all__ = ["Section", "available_genes", "load_section", "patients_of", "section_spots"]


def load_section(spec: str, her2st_root: str | None):
    """AnnData of one section: a her2st id ("C3", needs ``her2st_root``) or an ``.h5ad`` path."""
    if spec.endswith(".h5ad"):
        from ..io.st_data import read_st_h5ad

        return read_st_h5ad(spec)
    if her2st_root is None:
        raise ValueError(f"section {spec!r} looks like a her2st id but no her2st folder is configured (data.her2st)")
    return her2st_section(str(her2st_root), spec)


@dataclass(frozen=True)
class Section:
    """One section a configuration names: its counts, its image and mpp, its patches.

    ``spec`` is a her2st id (``"C3"``, read from ``her2st_root``) or the path of an ``.h5ad``
    in the scanpy/squidpy layout whose ``uns["spatial"]`` names the full-resolution image
    (``stpredict convert --image`` writes it). The counts are read once per object.
    """

    spec: str
    her2st_root: str | None = None

    @property
    def is_file(self) -> bool:
        """Whether the section is an ``.h5ad`` file (else a her2st id)."""
        return self.spec.endswith(".h5ad")

    @cached_property
    def adata(self):
        """The section's spots and counts (AnnData)."""
        return load_section(self.spec, self.her2st_root)

    def image(self) -> tuple[str | None, float | None]:
        """``(image path, µm per pixel)`` of an ``.h5ad`` section's full-resolution image
        (None where the file does not name them; her2st images are found by id)."""
        lib = next(iter(self.adata.uns.get("spatial", {}).values()), {})
        return lib.get("metadata", {}).get("image_path"), lib.get("scalefactors", {}).get("mpp_fullres")

    def spots(
        self,
        genes: list[str],
        *,
        patch_um: float | None = None,
        input_px: int | None = None,
        cache_dir: Path | None = None,
    ) -> SpotSet:
        """Spots with the expression of ``genes``; with their patches when ``patch_um`` is
        given (her2st patches are cached in ``cache_dir``)."""
        spots = spot_set(self.adata, genes)
        if patch_um is None:
            return spots
        if not self.is_file:
            return attach_her2st_patches(spots, self.her2st_root, self.spec, patch_um, input_px, cache_dir)
        image, mpp = self.image()
        if image is None or mpp is None:
            raise ValueError(
                f"{self.spec}: training needs uns['spatial'][library]['metadata']['image_path'] and "
                "scalefactors['mpp_fullres'] (stpredict convert --image sets them)"
            )
        from ..io.slide import open_slide

        with open_slide(image, mpp=mpp) as slide:
            spots.patches = read_patches(slide, spots.xy, patch_um, input_px)
        return spots


def section_spots(
    spec: str,
    her2st_root: str | None,
    genes: list[str],
    *,
    patch_um: float | None = None,
    input_px: int | None = None,
    cache_dir: Path | None = None,
) -> SpotSet:
    """`Section.spots` of one section named by ``spec``."""
    return Section(spec, her2st_root).spots(genes, patch_um=patch_um, input_px=input_px, cache_dir=cache_dir)


def available_genes(specs: list[str], her2st_root: str | None) -> set[str]:
    """Genes present in every listed section."""
    genes = None
    for spec in specs:
        names = set(Section(spec, her2st_root).adata.var_names)
        genes = names if genes is None else genes & names
    return genes or set()


def patients_of(specs: list[str], her2st_root: str | None) -> set[str]:
    """Patient ids of the listed sections."""
    return {str(p) for spec in specs for p in np.unique(Section(spec, her2st_root).adata.obs["patient"].astype(str))}
