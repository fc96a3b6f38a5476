"""Output folders that never lose a file the product did not write.

A slide's output folder (``stpredict predict``, ``stpredict cohort``) is filled in a hidden
temporary folder beside it and then put in place:

- a new folder appears whole, by one rename;
- an existing folder of ours (it holds `MARKER`, which lists the files the product wrote)
  gets its product files replaced one by one and the product files the new run no longer
  writes removed. Every other file in it (a user's notes, QuPath exports, analysis
  subfolders, a slide the user keeps there) is left where it is;
- any other existing folder that is not empty is refused (`ForeignFolderError`), and so is
  a folder that holds an input slide: users keep slides in folders named like them
  (``cases/CMU/CMU.svs``; MIRAX keeps its data in a folder named like the ``.mrxs``).

While files are being swapped, a journal (`JOURNAL`) lists the old and the new product
files and the marker is absent, so a kill at any moment leaves a folder that readers see
as incomplete and that the next run recognises as its own. Two runs writing one folder at
once take turns through a lock file for the few milliseconds of the swap (the last one
wins); a lock left by a killed process is taken over.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from ..errors import OutputError

__all__ = [
    "JOURNAL",
    "MARKER",
    "ForeignFolderError",
    "check_output_folder",
    "is_complete_output",
    "output_folder",
    "product_files",
]

MARKER = ".stpredict-output.json"
JOURNAL = ".stpredict-output.replacing.json"
_LOCK = ".stpredict-output.lock"
_LOCK_WAIT_S = 60.0
# Files every version of the product wrote into a slide folder, for folders written before
# the marker existed (0.1.0); their gene maps are named in their config.yaml.
_LEGACY_FILES = (
    "prediction.h5ad",
    "tumor_mask.tif",
    "tumor.geojson",
    "overview.png",
    "config.yaml",
    "cohort_record.json",
    "cohort_tile.png",
)


class ForeignFolderError(OutputError):
    """An output folder exists and was not written by napari-stpredict, or holds an input."""


def check_output_folder(folder: str | Path, inputs: Iterable[str | Path] = ()) -> None:
    """Refuse, before any slow work, an output folder that writing could harm.

    Parameters
    ----------
    folder : str or Path
        The slide's output folder (it need not exist).
    inputs : iterable of str or Path
        Input files of the run (the slide): none may lie inside ``folder``.

    Raises
    ------
    ForeignFolderError
        ``folder`` holds an input file, or exists, is not empty and was not written by
        napari-stpredict; the message names the folder and says why.
    """
    folder = Path(folder)
    resolved = _resolved(folder)
    for item in inputs:
        item_resolved = _resolved(Path(item))
        if item_resolved == resolved or resolved in item_resolved.parents:
            raise ForeignFolderError(
                f"{folder}: this output folder holds the input {item}; its outputs would be written "
                "among the input's files. Choose another --out (e.g. a folder beside the slides)"
            )
    if folder.exists() and not folder.is_dir():
        raise ForeignFolderError(f"{folder}: a file is in the way of this slide's output folder")
    if folder.is_dir() and product_files(folder) is None and any(folder.iterdir()):
        raise ForeignFolderError(
            f"{folder}: this folder exists and was not written by napari-stpredict (it has no "
            f"{MARKER}); nothing in it was changed. Choose another --out, or move the folder away"
        )


def product_files(folder: Path) -> set[str] | None:
    """The names of the product's files in ``folder``; None if the folder is not ours.

    A folder is ours when it holds `MARKER`, a `JOURNAL` (a run was killed while swapping
    files) or, written by 0.1.0, a ``config.yaml`` made by the product beside a
    ``prediction.h5ad``.
    """
    names: set[str] = set()
    found = False
    for record in (folder / MARKER, folder / JOURNAL):
        listed = _read_listing(record)
        if listed is not None:
            names |= listed
            found = True
    if found:
        return names
    return _legacy_files(folder)


def is_complete_output(folder: Path) -> bool:
    """Whether ``folder`` is a finished output folder (its marker present, no swap under way)."""
    return (folder / MARKER).is_file() and not (folder / JOURNAL).exists()


@contextlib.contextmanager
def output_folder(target: str | Path, *, inputs: Iterable[str | Path] = ()) -> Iterator[Path]:
    """Yield a temporary folder to fill; on success its files replace the product's in ``target``.

    Parameters
    ----------
    target : str or Path
        The final folder. Its parent must exist.
    inputs : iterable of str or Path
        Input files that must not lie inside ``target`` (checked again here; callers check
        with `check_output_folder` before slow work).

    Raises
    ------
    ForeignFolderError
        See `check_output_folder`.
    OutputError
        Another run held the folder for longer than a minute.

    Notes
    -----
    A failure, a kill or a full disk leaves the previous folder (or none) and no partial
    one: the temporary folder is hidden beside the target and removed on failure; those
    of killed processes are removed the next time the same target is written (never
    those of a process still running).
    """
    target = Path(target)
    inputs = list(inputs)
    check_output_folder(target, inputs)
    _remove_stale_partials(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-{_owner()}-", dir=target.parent))
    try:
        yield tmp
        new_files = sorted(p.name for p in tmp.iterdir())
        _write_json(tmp / MARKER, _listing(new_files))
        from .atomic import _umask

        os.chmod(tmp, 0o777 & ~_umask())
        try:
            os.rename(tmp, target)  # a new folder: appears whole
            return
        except OSError:
            if not target.is_dir():
                raise
        # The folder exists (ours, or created since the check by a concurrent run).
        with _locked(target):
            check_output_folder(target, inputs)
            _swap_files(tmp, target, new_files)
        shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _swap_files(tmp: Path, target: Path, new_files: list[str]) -> None:
    old_files = product_files(target) or set()
    # The journal first, then the marker gone: from here until the new marker is in place
    # the folder reads as incomplete, and still as ours (old and new files listed).
    _write_json(target / JOURNAL, _listing(sorted(old_files | set(new_files))))
    (target / MARKER).unlink(missing_ok=True)
    trash = tmp / f".old-{secrets.token_hex(4)}"
    trash.mkdir()
    for name in new_files:
        destination = target / name
        if destination.is_dir() and not destination.is_symlink():
            os.replace(destination, trash / name)  # a directory cannot be replaced in one step
        os.replace(tmp / name, destination)
    for name in sorted(old_files - set(new_files)):
        stale = target / name
        if stale.is_dir() and not stale.is_symlink():
            os.replace(stale, trash / name)
        else:
            stale.unlink(missing_ok=True)
    os.replace(tmp / MARKER, target / MARKER)  # complete again, with the new listing
    (target / JOURNAL).unlink(missing_ok=True)


def _listing(files: Iterable[str]) -> dict:
    from .._version import __version__

    names = sorted(set(files) - {MARKER, JOURNAL, _LOCK})
    return {"product": "napari-stpredict", "version": __version__, "files": names}


def _read_listing(path: Path) -> set[str] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("product") != "napari-stpredict":
        return None
    files = data.get("files")
    if not isinstance(files, list):
        return None
    # Only plain names: a listing is never a way to reach outside the folder.
    return {f for f in files if isinstance(f, str) and f and Path(f).name == f and f not in (".", "..")}


def _legacy_files(folder: Path) -> set[str] | None:
    import yaml

    config = folder / "config.yaml"
    if not (config.is_file() and (folder / "prediction.h5ad").is_file()):
        return None
    try:
        data = yaml.safe_load(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    if not isinstance(data, dict) or "napari_stpredict" not in data:
        return None
    from ..vocabulary import safe_filename

    genes = data["genes"] if isinstance(data.get("genes"), list) else []
    return set(_LEGACY_FILES) | {f"{safe_filename(str(g))}.tif" for g in genes}


def _write_json(path: Path, data: dict) -> None:
    from .atomic import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Hold ``folder``'s lock file (exclusive creation, portable); take over a dead holder's."""
    lock = folder / _LOCK
    deadline = time.monotonic() + _LOCK_WAIT_S
    while True:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            if not _holder_alive(lock):
                lock.unlink(missing_ok=True)
                continue
            if time.monotonic() > deadline:
                raise OutputError(
                    f"{folder}: another stpredict run is writing this folder (lock {lock.name}); try again "
                    "when it has finished"
                ) from None
            time.sleep(0.05)
            continue
        with os.fdopen(fd, "w") as fh:
            fh.write(_owner())
        break
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


def _owner() -> str:
    """``<host hash>_<pid>``: who holds a lock or a temporary folder. Cohort workers on
    several machines can share one output file system, where a process id alone says
    nothing about a process on another host."""
    import hashlib
    import socket

    return f"{hashlib.sha1(socket.gethostname().encode('utf-8')).hexdigest()[:8]}_{os.getpid()}"


def _owner_alive(owner: str, path: Path, *, foreign_host_grace_s: float) -> bool:
    """Whether the process named by ``owner`` (see `_owner`) may still be using ``path``.

    On this host: its process exists. On another host (or an unreadable owner): unless
    ``path`` has not changed for ``foreign_host_grace_s`` seconds.
    """
    host, _, pid_text = owner.partition("_")
    if host == _owner().partition("_")[0] and pid_text.isdigit():
        import psutil

        pid = int(pid_text)
        return pid == os.getpid() or psutil.pid_exists(pid)
    try:
        return time.time() - path.stat().st_mtime < foreign_host_grace_s
    except OSError:
        return False


def _holder_alive(lock: Path) -> bool:
    try:
        owner = lock.read_text(encoding="utf-8").strip()
    except OSError:
        owner = ""
    # An empty lock is being written this very moment (or its writer died doing so).
    return _owner_alive(owner, lock, foreign_host_grace_s=600 if owner else 5)


def _remove_stale_partials(target: Path) -> None:
    """Remove temporary folders of killed runs for ``target``, never a running one's."""
    import glob

    prefix = f".{target.name}.partial-"
    for stale in target.parent.glob(f"{glob.escape(prefix)}*"):
        owner = stale.name[len(prefix) :].rsplit("-", 1)[0]
        # Names without an owner were made by 0.1.0, which never ran two writers at once.
        if "_" in owner and _owner_alive(owner, stale, foreign_host_grace_s=24 * 3600):
            continue
        shutil.rmtree(stale, ignore_errors=True)


def _resolved(path: Path) -> Path:
    try:
        return path.resolve()
    except OSError:
        return path.absolute()
