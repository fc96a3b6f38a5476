"""Cheap checks that keep hostile or broken files from hanging or exhausting memory.

Each runs before any third-party reader touches the file: a pipe or device named like a
slide would block a reader forever, a TIFF whose directory chain loops makes tifffile
parse forever, and a header that declares a gigantic single-level image makes a
thumbnail read all of it.
"""

from __future__ import annotations

import os
import stat
import struct
from pathlib import Path

from ..errors import SlideFormatError, SlideNotFoundError

__all__ = ["check_regular_file", "check_tiff_ifd_chain", "MAX_UNPYRAMIDED_PIXELS", "MAX_TIFF_IFDS", "MIN_PLAUSIBLE_MPP"]

#: A level must be read whole for the thumbnail when no coarser one exists: above this
#: many pixels (about 1.5 GB of RGB) the slide needs a pyramid.
MAX_UNPYRAMIDED_PIXELS = 500_000_000
#: No real slide has more top-level TIFF directories (pyramid levels, label, macro...).
MAX_TIFF_IFDS = 10_000
#: Finer than any light microscope resolves (a 100x oil objective: ~0.06 µm/px).
MIN_PLAUSIBLE_MPP = 0.02


def check_regular_file(path: Path) -> None:
    """Raise a clear error unless ``path`` is an existing regular file (links followed).

    Raises
    ------
    SlideNotFoundError
        Missing, or a dangling link.
    SlideFormatError
        A folder, a pipe, a device or socket, or a symbolic-link loop.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise SlideNotFoundError(f"Slide file not found: {path}") from None
    except OSError as exc:  # ELOOP and friends
        if Path(path).is_symlink():
            raise SlideFormatError(
                f"{path}: a symbolic link that cannot be resolved ({exc.strerror}); a link loop?"
            ) from None
        raise SlideFormatError(f"{path}: cannot be accessed ({exc.strerror})") from None
    if stat.S_ISDIR(mode):
        raise SlideFormatError(f"{path} is a folder; open one slide file inside it")
    if not stat.S_ISREG(mode):
        kind = "a named pipe (FIFO)" if stat.S_ISFIFO(mode) else "a device or socket"
        raise SlideFormatError(f"{path}: not a regular file but {kind}; a slide must be a file on disk")


def check_tiff_ifd_chain(path: Path, *, max_ifds: int = MAX_TIFF_IFDS) -> int:
    """Follow a TIFF's chain of top-level image directories; refuse loops and absurd lengths.

    Anything else odd (offsets past the end, a short header) is left to the readers and
    `check_tiff_complete`, which explain it.

    Returns
    -------
    int
        The number of directories walked.

    Raises
    ------
    SlideFormatError
        The chain loops back on itself, or is longer than ``max_ifds``.
    """
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(16)
        if len(head) < 8 or head[:2] not in (b"II", b"MM"):
            return 0
        order = "<" if head[:2] == b"II" else ">"
        magic = struct.unpack(order + "H", head[2:4])[0]
        if magic == 42:
            offset = struct.unpack(order + "I", head[4:8])[0]
            count_fmt, count_size, entry_size, next_fmt, next_size = "H", 2, 12, "I", 4
        elif magic == 43 and len(head) >= 16:
            offset = struct.unpack(order + "Q", head[8:16])[0]
            count_fmt, count_size, entry_size, next_fmt, next_size = "Q", 8, 20, "Q", 8
        else:
            return 0
        seen: set[int] = set()
        while offset:
            if offset in seen:
                raise SlideFormatError(
                    f"{path}: the TIFF's image directories form a loop (directory "
                    f"{len(seen) + 1} points back to an earlier one); the file is corrupt"
                )
            if len(seen) >= max_ifds:
                raise SlideFormatError(
                    f"{path}: the TIFF has more than {max_ifds:,} image directories; the file is corrupt or not a slide"
                )
            if offset + count_size > size:
                break
            seen.add(offset)
            fh.seek(offset)
            n_entries = struct.unpack(order + count_fmt, fh.read(count_size))[0]
            next_at = offset + count_size + n_entries * entry_size
            if next_at + next_size > size:
                break
            fh.seek(next_at)
            offset = struct.unpack(order + next_fmt, fh.read(next_size))[0]
    return len(seen)
