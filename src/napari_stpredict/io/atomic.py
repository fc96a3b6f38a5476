"""Atomic file writes: write to a temporary file beside the target, then rename.

A full disk, a crash or a cancelled run leaves the previous file (or none), never a
half-written one. Output folders are written by `napari_stpredict.io.output_folder`.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "require_free_space", "write_npy"]


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``target``.

    Parameters
    ----------
    target : str or Path
        Final file path. Its folder must exist.

    Examples
    --------
    >>> with atomic_path("out.png") as tmp:  # doctest: +SKIP
    ...     image.save(tmp, format="PNG")
    """
    target = Path(target)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp makes the file private (0600); give it the mode a normal write would.
        os.chmod(tmp, target.stat().st_mode & 0o777 if target.exists() else 0o666 & ~_umask())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_npy(target: str | Path, array) -> None:
    """Save a numpy array as ``target`` (.npy) atomically, without pickles: the caches of
    patches and tiles, which a later run loads as they are."""
    import numpy as np

    with atomic_path(target) as tmp, open(tmp, "wb") as handle:
        np.save(handle, array, allow_pickle=False)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def require_free_space(folder: str | Path, needed: int) -> None:
    """Raise OSError (ENOSPC) unless ``folder``'s file system has ``needed`` bytes free.

    Checked before writing HDF5 files: on a full disk h5py fails noisily, printing errors
    from its destructors after the exception.
    """
    import errno
    import shutil

    free = shutil.disk_usage(folder).free
    if free < needed:
        raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} ({free:,} bytes free, about {needed:,} needed)")
