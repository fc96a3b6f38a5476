"""CSV tables that are safe to open in a spreadsheet.

A cell that starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is a
formula to Excel, LibreOffice and Google Sheets (OWASP "CSV injection"): a slide named
``=HYPERLINK(...).tiff`` in a manifest would run as one when a colleague opens
``cohort.csv``. Such text cells get a leading apostrophe, the spreadsheet convention for
"text, not a formula"; numbers are written as they are.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["neutralise_formulas", "write_csv"]

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def neutralise_formulas(frame):
    """A copy of the DataFrame ``frame`` whose text cells cannot start a formula.

    Only string cells (and the column names) change; numeric columns are untouched, so a
    negative number stays a number.
    """
    out = frame.copy()
    for column in out.columns:
        if out[column].dtype == object or str(out[column].dtype) in ("string", "str"):
            out[column] = out[column].map(_neutral)
    out.columns = [_neutral(c) for c in out.columns]
    if out.index.dtype == object:
        out.index = out.index.map(_neutral)
    return out


def write_csv(frame, path: str | Path, **to_csv_kwargs) -> Path:
    """Write ``frame`` as CSV atomically, with formula-like text neutralised."""
    from .atomic import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        neutralise_formulas(frame).to_csv(tmp, **to_csv_kwargs)
    return path


def _neutral(value):
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value
