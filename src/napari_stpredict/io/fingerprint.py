"""Fingerprints of files: a slide's sampled content, a small file's whole SHA-1.

Kept free of heavy imports: the model card (`napari_stpredict.model.card`) checks its
checkpoint's hash with `file_sha1` in commands that must start at once.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

__all__ = ["file_sha1", "slide_fingerprint"]

_BLOCK = 1 << 16


def slide_fingerprint(path: Path) -> str:
    """Hash of a slide file's size, modification time and sampled content.

    Sampling keeps it fast on multi-GB files; the modification time catches an edit of
    the same size between the sampled blocks (a copy that keeps the time, or an edit
    that restores it, is the one case left).
    """
    st = path.stat()
    size = st.st_size
    h = hashlib.sha1(f"{size}|{st.st_mtime_ns}".encode())
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
