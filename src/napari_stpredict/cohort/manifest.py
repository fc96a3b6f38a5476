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
        Naming the argument: a glob or folder that matches no slide, a manifest without a
        ``slide`` column, a bad ``mpp`` cell, duplicate manifest ids, no slides at all.
        A listed file that does not exist is not an error here: its slide fails alone.
    """
    from ..inference.export import safe_filename
    from ..inference.job import folder_names, pseudonym
    from ..io._sniff import SLIDE_SUFFIXES

    entries: list[tuple[Path, str, float | None, str | None]] = []  # path, given_as, mpp, id
    for item in items:
        text = str(item)
        path = Path(text)
        if path.suffix.lower() == ".csv" and path.is_file():
            entries.extend(_read_manifest(path))
        elif path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in SLIDE_SUFFIXES)
            if not found:
                raise ValueError(f"{text}: a folder without slide files ({', '.join(sorted(SLIDE_SUFFIXES))})")
            entries.extend((p, str(p), None, None) for p in found)
        elif _GLOB_CHARS & set(text) and not path.exists():
            found = sorted(Path(p) for p in glob.glob(text) if Path(p).is_file())
            if not found:
                raise ValueError(f"{text}: no file matches this pattern")
            entries.extend((p, str(p), None, None) for p in found)
        else:
            entries.append((path, text, None, None))
    if not entries:
        raise ValueError("no slides given")

    seen: set[str] = set()
    unique = []
    for entry in entries:  # a slide named twice (a glob and a manifest) is predicted once
        key = str(entry[0].resolve())
        if key not in seen:
            seen.add(key)
            unique.append(entry)

    given_ids = [e[3] for e in unique if e[3]]
    duplicates = sorted({i for i in given_ids if given_ids.count(i) > 1})
    if duplicates:
        raise ValueError(f"manifest ids used more than once: {', '.join(duplicates[:10])}")

    if pseudonymize:
        ids = [pseudonym(e[0]) if e[0].is_file() else _missing_id(e[0]) for e in unique]
    else:
        ids = [safe_filename(e[3]) if e[3] else None for e in unique]
        unnamed = [k for k, i in enumerate(ids) if i is None]
        taken = frozenset(i.lower() for i in ids if i)
        for k, name in zip(unnamed, folder_names([unique[k][0] for k in unnamed], taken), strict=True):
            ids[k] = name
    return [CohortSlide(id=i, path=e[0], given_as=e[1], mpp=e[2]) for i, e in zip(ids, unique, strict=True)]


def _read_manifest(path: Path) -> list[tuple[Path, str, float | None, str | None]]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:  # Excel writes a BOM
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ValueError(f"{path}: not a readable CSV manifest ({exc})") from exc
    if not rows or "slide" not in rows[0]:
        raise ValueError(f"{path}: a manifest needs a 'slide' column (optional: mpp, id)")
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
        entries.append((slide, cell, mpp, (row.get("id") or "").strip() or None))
    return entries


def _missing_id(path: Path) -> str:
    """A pseudonymous id for a file that does not exist (its name stays out of the outputs)."""
    import hashlib

    return f"missing-{hashlib.sha1(str(path.resolve()).encode('utf-8')).hexdigest()[:8]}"
