"""On-disk cache of predictions, keyed by slide content, model file and parameters.

Rerunning the same slide with the same model and settings loads the saved `Prediction`
instead of running the model. The slide key samples the file's bytes (size, start, end
and 16 blocks spread through it), so renaming or moving a slide keeps its cache while
any re-scan or edit changes it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .predict import predict_slide
from .prediction import Prediction

__all__ = ["cache_dir", "slide_fingerprint", "file_sha1", "cached_predict_slide"]

_BLOCK = 1 << 16
_RUN_CONTROL = frozenset({"cancel_event", "batch_size", "num_workers", "prefetch_batches"})


def cache_dir() -> Path:
    """``$STPREDICT_CACHE_DIR``, else the platform's user cache folder."""
    env = os.environ.get("STPREDICT_CACHE_DIR")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("napari-stpredict")) / "predictions"


def slide_fingerprint(path: Path) -> str:
    """Hash of a slide file's size and sampled content (fast for multi-GB files)."""
    size = path.stat().st_size
    h = hashlib.sha1(str(size).encode())
    with open(path, "rb") as fh:
        for i in range(18):
            offset = 0 if i == 0 else max(0, size - _BLOCK) if i == 17 else (size * i) // 17
            fh.seek(offset)
            h.update(fh.read(_BLOCK))
    return h.hexdigest()


_FILE_SHA: dict[tuple[str, float, int], str] = {}


def file_sha1(path: Path) -> str:
    """SHA-1 of a whole (small) file, memoised by path, mtime and size."""
    st = path.stat()
    key = (str(path.resolve()), st.st_mtime, st.st_size)
    if key not in _FILE_SHA:
        h = hashlib.sha1()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        _FILE_SHA[key] = h.hexdigest()
    return _FILE_SHA[key]


def cache_key(slide, model_path: Path | None, params: dict[str, Any]) -> str | None:
    """The cache key, or None when the slide or model has no file to fingerprint."""
    if slide.path is None or model_path is None or not Path(model_path).exists():
        return None
    # Only what shapes the result: run control (the cancel event, whose text holds a memory
    # address, batch size, reader threads) must never make a rerun miss the cache.
    shaping = {k: v for k, v in params.items() if k not in _RUN_CONTROL}
    parts = {"slide": slide_fingerprint(slide.path), "mpp": slide.mpp, "model": file_sha1(Path(model_path)),
             "params": shaping, "version": 2}
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def cached_predict_slide(slide, model, *, model_path: Path | None = None, use_cache: bool = True,
                         directory: Path | None = None, **params) -> Iterator[dict]:
    """`predict_slide` with the on-disk cache; yields progress, returns the `Prediction`."""
    key = cache_key(slide, model_path, params) if use_cache else None
    path = (directory or cache_dir()) / f"{key}.h5ad" if key else None
    if path is not None and path.exists():
        yield {"stage": "cache", "done": 1, "total": 1, "message": f"loaded from cache {path.name}"}
        prediction = Prediction.load(path)
        prediction.meta["cache"] = "hit"
        return prediction
    prediction = yield from predict_slide(slide, model, **params)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        prediction.save(path)
    prediction.meta["cache"] = "miss" if path is not None else "off"
    return prediction
