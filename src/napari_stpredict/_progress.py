"""Progress generators: the one loop that runs them.

Long work (`predict_slide`, `iter_train`, `iter_evaluate`) is a generator that yields
progress dicts and returns its result; the CLI, the library's plain functions and the
evaluation drive it through these two helpers (the widget through napari's thread_worker).
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from typing import Any

__all__ = ["drain", "relabelled"]


def drain(gen: Iterator[dict], on_progress: Callable[[dict], Any] | None = None) -> Any:
    """Run a progress generator to its end and return its return value.

    Parameters
    ----------
    gen : generator
        Yields progress dicts, returns the result.
    on_progress : callable, optional
        Called with each progress dict (e.g. to move a progress bar).
    """
    while True:
        try:
            progress = next(gen)
        except StopIteration as stop:
            return stop.value
        if on_progress is not None:
            on_progress(progress)


def relabelled(gen: Iterator[dict], **extra: Any) -> Generator[dict, None, Any]:
    """Re-yield a progress generator's dicts with ``extra`` keys first; return its return value."""
    while True:
        try:
            progress = next(gen)
        except StopIteration as stop:
            return stop.value
        yield {**extra, **progress}
