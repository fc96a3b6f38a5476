"""The 8 neighbouring patches of a section's spots, as the whole-slide engine sees them.

For spatial context (`napari_stpredict.inference.context`) in calibration and
evaluation: the patches one patch width beside each spot, and whether each is at least
half tissue by the engine's own tissue detection and test (`spot_grid`), so that a
held-out spot gets exactly the context a predicted map gives it. Patches are read one
offset at a time and handed to a function (an embedding, colour statistics), so memory
stays at one offset's patches.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from ..inference.context import NEIGHBOUR_OFFSETS

__all__ = ["read_neighbours", "map_neighbours"]


def _section_image(spec: str, her2st_root: str | None) -> tuple[Path, float]:
    """The H&E image of a section and its µm per pixel."""
    if spec.endswith(".h5ad"):
        from .sections import Section

        image, mpp = Section(spec, her2st_root).image()
        if image is None or mpp is None:
            raise ValueError(f"{spec}: spatial context needs the section's image (stpredict convert --image)")
        return Path(image), float(mpp)
    from ..io.st_data import HER2ST_MPP, her2st_image

    return her2st_image(her2st_root, spec), HER2ST_MPP


@lru_cache(maxsize=64)
def _tissue_mask(image: Path, mpp: float, patch_um: float):
    """The engine's tissue mask of a section image (same thumbnail size, same detection);
    kept in memory, as calibration and scoring ask for the same sections again."""
    from ..inference.predict import _tissue_thumbnail_size
    from ..io.slide import open_slide
    from ..tissue import slide_tissue_mask

    with open_slide(image, mpp=mpp) as slide:
        return slide_tissue_mask(slide, max_size=_tissue_thumbnail_size(slide, patch_um), require_tissue=False)


def read_neighbours(
    spots,
    spec: str,
    her2st_root: str | None,
    *,
    patch_um: float,
    input_px: int,
    cache_dir: Path | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Patches at each of the 8 neighbour offsets of a section's spots.

    Parameters
    ----------
    spots : SpotSet
        The spots of section ``spec`` (their ``xy`` in the image's pixels).
    spec : str
        A her2st section id or an ``.h5ad`` path (as in training configs).
    her2st_root : str, optional
        The her2st folder, for her2st ids.
    patch_um, input_px : float, int
        The model's patch contract.
    cache_dir : Path, optional
        Patch cache for her2st sections (as for the spots' own patches).

    Yields
    ------
    tuple of numpy.ndarray
        Per offset, in `NEIGHBOUR_OFFSETS` order: ``(n, px, px, 3)`` uint8 patches and
        ``(n,)`` bool, True where that patch is at least half tissue.
    """
    from ..io.patches import read_patches
    from ..io.slide import open_slide
    from ..tiling import _patch_tissue_fraction
    from .data import attach_her2st_patches

    image, mpp = _section_image(spec, her2st_root)
    mask = _tissue_mask(image, mpp, patch_um)
    step = patch_um / mpp  # image pixels between neighbouring patches
    with contextlib.ExitStack() as stack:
        opened: list[Any] = []

        def section_image():
            # Opened once for all 8 offsets, and only if one of them is not in the cache:
            # a section JPEG is decoded whole (~2 s), which was 2/3 of a calibration's time.
            if not opened:
                opened.append(stack.enter_context(open_slide(image, mpp=mpp)))
            return opened[0]

        for dx, dy in NEIGHBOUR_OFFSETS:
            xy = spots.xy + np.array([dx * step, dy * step])
            # The engine keeps a grid cell whose patch is at least half tissue (spot_grid).
            tissue = _patch_tissue_fraction(mask.mask, mask.l0_per_th, xy[:, 0], xy[:, 1], (step, step)) >= 0.5
            if spec.endswith(".h5ad"):
                patches = read_patches(section_image(), xy, patch_um, input_px)
            else:  # the cached reader the spots' own patches use
                shifted = replace(spots, xy=xy, patches=None)
                patches = attach_her2st_patches(
                    shifted, her2st_root, spec, patch_um, input_px, cache_dir, open_image=section_image
                ).patches
            yield patches, tissue


def map_neighbours(
    fn: Callable[[np.ndarray], Any],
    spots,
    sections: list[str],
    her2st_root: str | None,
    *,
    patch_um: float,
    input_px: int,
    cache_dir: Path | None = None,
) -> tuple[list[Any], np.ndarray]:
    """``fn`` of every neighbour offset's patches, over spots of one or more sections.

    Parameters
    ----------
    fn : callable
        Maps ``(n, px, px, 3)`` uint8 patches to per-patch rows (embeddings, features).
    spots : SpotSet
        Spots of ``sections``, in section order (as `SpotSet.concat` builds them).
    sections : list of str
        Section specs, in the order their spots appear.

    Returns
    -------
    tuple
        A list of 8 outputs of ``fn`` (each over all spots, in spot order), and the
        ``(8, n)`` tissue flags.
    """
    outputs: list[list[Any]] = [[] for _ in NEIGHBOUR_OFFSETS]
    tissue = np.zeros((len(NEIGHBOUR_OFFSETS), len(spots)), bool)
    order = []
    for spec in sections:
        inside = np.flatnonzero(spots.section == _section_name(spec))
        if not len(inside):
            continue
        order.append(inside)
        part = spots.subset(spots.section == _section_name(spec))
        neighbours = read_neighbours(part, spec, her2st_root, patch_um=patch_um, input_px=input_px, cache_dir=cache_dir)
        for o, (patches, present) in enumerate(neighbours):
            outputs[o].append(fn(patches))
            tissue[o, inside] = present
    # Back to spot order, whatever the order of the sections' spots in ``spots``.
    where = np.argsort(np.concatenate(order), kind="stable")
    return [_concat(parts)[where] for parts in outputs], tissue


def _section_name(spec: str) -> str:
    """The ``section`` value a spec's spots carry (her2st ids as is; an .h5ad's own)."""
    if not spec.endswith(".h5ad"):
        return spec
    from .sections import load_section

    return str(load_section(spec, None).obs["section"].iloc[0])


def _concat(parts: list[Any]):
    import torch

    if isinstance(parts[0], torch.Tensor):
        return torch.cat(parts)
    return np.concatenate(parts)


def context_embeddings(model, spots, sections: list[str], her2st_root: str | None, *, cache_dir: Path | None = None):
    """What `compute_calibration` needs for a model with spatial context, else None.

    Parameters
    ----------
    model : STModel
        Its ``retrieval.context_sigma_um`` decides; its encoder embeds the patches.
    spots : SpotSet
        Spots of ``sections`` (the training spots).
    sections : list of str
        Their section specs.
    her2st_root : str, optional
        The her2st folder, for her2st ids.
    cache_dir : Path, optional
        Patch cache.

    Returns
    -------
    tuple or None
        ``(embeddings, tissue)`` as `map_neighbours` returns them, or None when the
        model uses no context. With per-slide adaptation each section's patches are
        adapted with that section's map (`napari_stpredict.training.adapt`).
    """
    if not model.retrieval.context_sigma_um > 0:
        return None
    from .adapt import adapted_embeddings, section_adaptations

    adaptations = section_adaptations(model, spots)
    adapted = any(a is not None for a in adaptations.values())
    # Adapted as the engine adapts every patch of a slide: raw features first, then each
    # section's map (`adapted_embeddings`); unadapted, embedded directly.
    outputs, tissue = map_neighbours(
        model.features_many if adapted else model.embed_many,
        spots,
        sections,
        her2st_root,
        patch_um=model.io.patch_um,
        input_px=model.io.input_px,
        cache_dir=cache_dir,
    )
    if not adapted:
        return outputs, tissue
    return [adapted_embeddings(model, f, spots.section, adaptations) for f in outputs], tissue
