"""Cohorts: many slides on a Dask ``distributed`` cluster, resumable, with a cohort table.

``distributed`` is imported only when a cohort runs, so ``import napari_stpredict`` and
the napari plugin never load it.
"""

from .manifest import CohortSlide, resolve_slides
from .run import run_cohort

__all__ = ["CohortSlide", "resolve_slides", "run_cohort"]
