"""The slides of a cohort: from paths, globs, folders or a CSV manifest, each with an id."""

from __future__ import annotations

import csv
import glob
import math
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CohortSlide", "resolve_slides"]

_GLOB_CHARS = set("*?[")


@dataclass(frozen=True)
class CohortSlide:
    """One slide of a cohort.

    Attributes
    ----------
    id : str
        Names its output folder and its row of the cohort table (safe as a file name).
    path : Path
        The file.
    given_as : str
        The slide as the user gave it (a path as typed, or the manifest's ``slide`` cell):
        the only path the cohort table records.
    mpp : float, optional
        µm per pixel from the manifest, for a slide that does not record it.
    """

    id: str
    path: Path
    given_as: str
    mpp: float | None = None


def resolve_slides(items, *, pseudonymize: bool = False) -> list[CohortSlide]:
    """Expand the ``SLIDES`` arguments of ``stpredict cohort`` into slides with unique ids.

    Parameters
    ----------
    items : iterable of str or Path
        Slide files, glob patterns (quoted, or on Windows where the shell does not expand
        them), folders (their slide files, not recursing) or ``.csv`` manifests with a
        ``slide`` column and optional ``mpp`` and ``id`` columns (relative paths are taken
        from the manifest's folder).
    pseudonymize : bool
        Ids made from each file's content (``slide-<12 hex>``) instead of file names.

    Returns
    -------
    list of CohortSlide
        In the order given, each file once.

    Raises
    ------
    ValueError
        Naming the argument or manifest line: a glob or folder that matches no slide, a
        manifest without a ``slide`` column, a bad ``mpp`` cell, an id that is reserved
        (``.``, ``..``), hidden, too long or the same folder name as another once made
        safe, a file given twice with different ids or mpp, no slides at all.
        A listed file that does not exist is not an error here: its slide fails alone.
    """
    from ..inference.job import folder_names, pseudonym
    from ..io._sniff import SLIDE_SUFFIXES

    entries: list[_Entry] = []
    for item in items:
        text = str(item)
        path = Path(text)
        if path.suffix.lower() == ".csv" and path.is_file():
            entries.extend(_read_manifest(path))
        elif path.is_dir():
            found = sorted(
                p
                for p in path.iterdir()
                if p.is_file() and p.suffix.lower() in SLIDE_SUFFIXES and not _is_cohort_output(p)
            )
            if not found:
                raise ValueError(f"{text}: a folder without slide files ({', '.join(sorted(SLIDE_SUFFIXES))})")
            entries.extend(_Entry(p, str(p), None, None, f"{p} (in folder {text})") for p in found)
        elif _GLOB_CHARS & set(text) and not path.exists():
            found = sorted(Path(p) for p in glob.glob(text) if Path(p).is_file() and not _is_cohort_output(Path(p)))
            if not found:
                raise ValueError(f"{text}: no file matches this pattern")
            entries.extend(_Entry(p, str(p), None, None, f"{p} (pattern {text})") for p in found)
        else:
            entries.append(_Entry(path, text, None, None, f"argument {text}"))
    if not entries:
        raise ValueError("no slides given")

    unique = _merge_repeats(entries)
    if pseudonymize:
        ids = [pseudonym(e.path) if e.path.is_file() else _missing_id(e.path) for e in unique]
    else:
        ids = _checked_ids(unique)
        unnamed = [k for k, i in enumerate(ids) if i is None]
        taken = frozenset(i.lower() for i in ids if i)
        for k, name in zip(unnamed, folder_names([unique[k].path for k in unnamed], taken), strict=True):
            ids[k] = name
    return [CohortSlide(id=i, path=e.path, given_as=e.given_as, mpp=e.mpp) for i, e in zip(ids, unique, strict=True)]


@dataclass
class _Entry:
    path: Path
    given_as: str
    mpp: float | None
    id: str | None
    source: str  # where the user named it: "manifest.csv, line 5", "argument x.svs"


def _merge_repeats(entries: list[_Entry]) -> list[_Entry]:
    """Each file once. A file named twice (a glob and a manifest row) is predicted once
    with the values given; two rows that give it different ids or mpp are refused, naming
    both: silently keeping one would drop the other row's slide from the table."""
    by_file: dict[str, _Entry] = {}
    for entry in entries:
        key = str(entry.path.resolve())
        first = by_file.get(key)
        if first is None:
            by_file[key] = entry
            continue
        for what in ("id", "mpp"):
            mine, theirs = getattr(entry, what), getattr(first, what)
            if mine is not None and theirs is not None and mine != theirs:
                raise ValueError(
                    f"{first.source} and {entry.source} name the same file {entry.given_as} with "
                    f"different {what}s ({theirs} and {mine}): give each slide file once"
                )
        if first.id is None and entry.id is not None:
            first.id = entry.id
            first.source = entry.source
        if first.mpp is None:
            first.mpp = entry.mpp
    return list(by_file.values())


def _checked_ids(entries: list[_Entry]) -> list[str | None]:
    """The manifest ids made safe as folder names, refused (naming the manifest line) when
    reserved, empty, too long or equal to another after the change."""
    from ..inference.job import MAX_FOLDER_NAME_BYTES as _MAX_ID_BYTES  # the same folder-name limit
    from ..vocabulary import safe_filename

    ids: list[str | None] = []
    owners: dict[str, _Entry] = {}
    for entry in entries:
        if entry.id is None:
            ids.append(None)
            continue
        safe = safe_filename(entry.id)
        problem = None
        if not safe.strip("._"):
            problem = "is not usable as a folder name (nothing but dots and underscores once made safe)"
        elif safe.startswith("."):
            problem = "starts with a dot (the folder would be hidden)"
        elif len(safe.encode("utf-8")) > _MAX_ID_BYTES:
            problem = f"is longer than {_MAX_ID_BYTES} bytes, too long for a folder name"
        if problem:
            raise ValueError(f"{entry.source}: id {entry.id!r} {problem}")
        clash = owners.get(safe.lower())  # compared without case, as case-insensitive file systems do
        if clash is not None:
            what = (
                f"id {entry.id!r} used twice"
                if clash.id == entry.id
                else f"ids {clash.id!r} and {entry.id!r} both become the folder name {safe!r}"
            )
            raise ValueError(f"{clash.source} and {entry.source}: {what}; give each slide its own id")
        owners[safe.lower()] = entry
        ids.append(safe)
    return ids


def _is_cohort_output(path: Path) -> bool:
    """A figure an earlier cohort wrote into this folder (``--out`` among the slides)."""
    return path.name.startswith("cohort_") and path.suffix.lower() == ".png" and (path.parent / "cohort.csv").is_file()


def _read_manifest(path: Path) -> list[_Entry]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:  # Excel writes a BOM
            reader = csv.DictReader(fh)
            rows = list(reader)
            columns = reader.fieldnames or []
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ValueError(f"{path}: not a readable CSV manifest ({exc})") from exc
    if "slide" not in columns:
        raise ValueError(f"{path}: a manifest needs a 'slide' column (optional: mpp, id)")
    if not rows:
        raise ValueError(f"{path}: the manifest lists no slides (a header and no rows)")
    entries = []
    for line, row in enumerate(rows, start=2):
        cell = (row.get("slide") or "").strip()
        if not cell:
            raise ValueError(f"{path}, line {line}: empty 'slide' cell")
        slide = Path(cell) if Path(cell).is_absolute() else path.parent / cell
        mpp = None
        if (row.get("mpp") or "").strip():
            try:
                mpp = float(row["mpp"])
            except ValueError:
                mpp = math.nan
            if not (math.isfinite(mpp) and mpp > 0):
                raise ValueError(
                    f"{path}, line {line}: mpp must be a positive number of µm per pixel, got {row['mpp']!r}"
                )
        entries.append(_Entry(slide, cell, mpp, (row.get("id") or "").strip() or None, f"{path}, line {line}"))
    return entries


def _missing_id(path: Path) -> str:
    """A pseudonymous id for a file that does not exist (its name stays out of the outputs)."""
    import hashlib

    return f"missing-{hashlib.sha1(str(path.resolve()).encode('utf-8')).hexdigest()[:8]}"
