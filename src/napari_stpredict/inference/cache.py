"""On-disk cache of predictions, keyed by slide content, model file and parameters.

Rerunning the same slide with the same model and settings loads the saved `Prediction`
instead of running the model. The slide key samples the file's bytes (size, start, end
and 16 blocks spread through it), so renaming or moving a slide keeps its cache while
any re-scan or edit changes it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Generator
from pathlib import Path
from typing import Any

from ..io.fingerprint import file_sha1, slide_fingerprint
from .predict import predict_slide
from .prediction import Prediction

__all__ = ["cache_dir", "slide_fingerprint", "file_sha1", "cached_predict_slide"]

_RUN_CONTROL = frozenset({"cancel_event", "batch_size", "num_workers", "prefetch_batches"})


def cache_dir() -> Path:
    """``$STPREDICT_CACHE_DIR``, else the platform's user cache folder."""
    env = os.environ.get("STPREDICT_CACHE_DIR")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("napari-stpredict")) / "predictions"


def cache_key(slide, model_path: Path | None, params: dict[str, Any]) -> str | None:
    """The cache key, or None when the slide or model has no file to fingerprint."""
    if model_path is None or not Path(model_path).exists():
        return None
    if slide.path is not None:
        source = slide_fingerprint(slide.path)
    elif hasattr(slide, "content_fingerprint"):  # an in-memory slide (napari's own reader): its pixels
        source = slide.content_fingerprint()
    else:
        return None
    # Only what shapes the result: run control (the cancel event, whose text holds a memory
    # address, batch size, reader threads) must never make a rerun miss the cache.
    shaping = {k: v for k, v in params.items() if k not in _RUN_CONTROL}
    parts = {
        "slide": source,
        "mpp": slide.mpp,
        "model": file_sha1(Path(model_path)),
        "params": shaping,
        "version": 4,
    }
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


#: The slide name a cache entry records.
UNNAMED = "(slide name not kept in the cache)"


def _load_entry(path: Path, key: str, slide) -> Prediction | None:
    """The cached prediction at ``path`` if it is readable and really is this key's;
    otherwise None, with a warning, and the entry is removed so it is recomputed."""
    import warnings

    from ..errors import StPredictWarning

    try:
        prediction = Prediction.load(path)
        stored = prediction.meta.cache_key
        if stored != key:
            raise ValueError(f"it holds another prediction (key {str(stored)[:12]}..., expected {key[:12]}...)")
    except Exception as exc:  # noqa: BLE001 - h5py/anndata raise many kinds for a damaged file
        warnings.warn(
            f"{slide.name}: discarding the damaged cache entry {path.name} ({exc}); predicting again",
            StPredictWarning,
            stacklevel=3,
        )
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)
        return None
    return prediction


def cached_predict_slide(
    slide, model, *, model_path: Path | None = None, use_cache: bool = True, directory: Path | None = None, **params
) -> Generator[dict, None, Prediction]:
    """`predict_slide` with the on-disk cache; yields progress, returns the `Prediction`.

    An entry records its key and is checked on load: a damaged, truncated or swapped
    entry is discarded with a warning and recomputed. A cache folder that cannot be
    written (read-only, full) only costs the caching, with a warning.
    """
    import warnings

    from ..errors import StPredictWarning
    from ..io.atomic import require_free_space

    key = cache_key(slide, model_path, params) if use_cache else None
    path = (directory or cache_dir()) / f"{key}.h5ad" if key else None
    if path is not None and path.exists():
        cached = _load_entry(path, str(key), slide)
        if cached is not None:
            yield {"stage": "cache", "done": 1, "total": 1, "message": f"loaded from cache {path.name}"}
            # the entry holds no file name: the current file's is shown
            cached.set_meta(cached.meta.with_slide_name(slide.name).with_changes(cache="hit"))
            return cached
    prediction = yield from predict_slide(slide, model, **params)
    status = "off"
    if path is not None:
        prediction.set_meta(prediction.meta.with_changes(cache_key=key))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            for leftover in path.parent.glob(f".{path.name}.*.part"):  # of a write that was killed
                leftover.unlink(missing_ok=True)
            require_free_space(path.parent, 2 * prediction.adata.X.nbytes + (1 << 20))
            # Entries are keyed by content and shared by every name the file goes by: they
            # record no file name (--pseudonymize promises that nothing else does).
            named = prediction.meta
            prediction.set_meta(named.with_slide_name(UNNAMED))
            try:
                prediction.save(path)
            finally:
                prediction.set_meta(named)
            status = "miss"
        except Exception as exc:  # noqa: BLE001 - OSError, or h5py's RuntimeError on a full disk
            warnings.warn(
                f"{slide.name}: the prediction could not be cached in {path.parent} ({exc}); "
                "continuing without the cache",
                StPredictWarning,
                stacklevel=3,
            )
    prediction.set_meta(prediction.meta.with_changes(cache=status))
    return prediction
