"""Spot datasets for training and evaluation: expression tables and image patches."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..io.patches import read_patches
from ..io.slide import open_slide
from ..io.st_data import HER2ST_MPP, her2st_image, read_her2st_section
from ..vocabulary import log1p_cp10k

__all__ = [
    "SpotSet",
    "log1p_cp10k",
    "tumor_labels",
    "her2st_section",
    "spot_set",
    "attach_her2st_patches",
]


def tumor_labels(obs) -> np.ndarray:
    """1 for spots in an expression cluster the authors named "cancer ...", 0 for other named
    clusters, -1 where unknown (cluster "unknown" or unlabelled)."""
    if "cluster_name" not in obs:
        return np.full(len(obs), -1, np.int8)
    names = obs["cluster_name"].astype(str).str.lower()
    out = np.where(names.str.contains("cancer"), 1, 0).astype(np.int8)
    out[names.isin(["unknown", "unlabelled", "nan"]).to_numpy()] = -1
    return out


@lru_cache(maxsize=64)
def her2st_section(root: str, section: str):
    """Read (and cache in memory) one her2st section as AnnData."""
    return read_her2st_section(root, section, with_image=False)


@dataclass
class SpotSet:
    """Spots of one or more sections: expression of the model genes, ids, labels, and patches.

    ``patches`` is ``(n, px, px, 3)`` uint8 or None for count-only sections.
    """

    genes: list[str]
    expression: np.ndarray
    section: np.ndarray
    patient: np.ndarray
    tumor: np.ndarray
    xy: np.ndarray
    patches: np.ndarray | None = None
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.expression)

    def subset(self, mask: np.ndarray) -> SpotSet:
        """The spots where ``mask`` is True."""
        return SpotSet(
            self.genes,
            self.expression[mask],
            self.section[mask],
            self.patient[mask],
            self.tumor[mask],
            self.xy[mask],
            None if self.patches is None else self.patches[mask],
            dict(self.meta),
        )

    @staticmethod
    def concat(sets: list[SpotSet]) -> SpotSet:
        """Spots of several sets with the same genes, in order."""
        if any(s.genes != sets[0].genes for s in sets):
            raise ValueError("cannot concatenate spot sets with different gene lists")
        has_patches = all(s.patches is not None for s in sets)
        return SpotSet(
            sets[0].genes,
            np.concatenate([s.expression for s in sets]),
            np.concatenate([s.section for s in sets]),
            np.concatenate([s.patient for s in sets]),
            np.concatenate([s.tumor for s in sets]),
            np.concatenate([s.xy for s in sets]),
            np.concatenate([s.patches for s in sets]) if has_patches else None,
        )


def spot_set(adata, genes: list[str]) -> SpotSet:
    """Expression of ``genes`` (all must exist) and spot annotations of one AnnData."""
    from ..io.st_data import match_genes

    idx, found, missing = match_genes(adata.var, genes)
    if missing:
        raise ValueError(f"section {adata.obs['section'].iloc[0]}: genes missing from the data: {missing[:10]}")
    return SpotSet(
        genes=list(genes),
        expression=log1p_cp10k(adata, idx),
        section=adata.obs["section"].astype(str).to_numpy(),
        patient=adata.obs["patient"].astype(str).to_numpy(),
        tumor=tumor_labels(adata.obs),
        xy=np.asarray(adata.obsm["spatial"], np.float64),
    )


def attach_her2st_patches(
    spots: SpotSet,
    root: str | Path,
    section: str,
    patch_um: float,
    input_px: int,
    cache_dir: Path | None = None,
    *,
    open_image=None,
) -> SpotSet:
    """Read a her2st section's patches at its spot centres (cached as .npy in ``cache_dir``).

    ``open_image``, when given, returns the section's image already open (a caller that
    reads several sets of patches of one section, such as the 8 neighbour offsets, opens
    and decodes the whole JPEG once instead of once a set). The cache file is written
    atomically, so a killed run leaves no truncated file to load next time.
    """
    cache = None
    if cache_dir is not None:
        # Every spot's position is in the key (v1 keyed on the first two spots only, so two
        # spot sets that began alike shared a cache file).
        where = hashlib.sha1(np.ascontiguousarray(spots.xy, np.float64).tobytes()).hexdigest()
        digest = f"{section}|{patch_um}|{input_px}|{len(spots.xy)}|{where}|v2"
        key = hashlib.sha1(digest.encode()).hexdigest()[:12]
        cache = Path(cache_dir) / f"patches_{section}_{patch_um:g}um_{input_px}px_{key}.npy"
        if cache.exists():
            spots.patches = np.load(cache)
            return spots
    if open_image is not None:
        spots.patches = read_patches(open_image(), spots.xy, patch_um, input_px)
    else:
        with open_slide(her2st_image(root, section), mpp=HER2ST_MPP) as slide:
            spots.patches = read_patches(slide, spots.xy, patch_um, input_px)
    if cache is not None:
        from ..io.atomic import write_npy

        cache.parent.mkdir(parents=True, exist_ok=True)
        write_npy(cache, spots.patches)
    return spots
