"""Decide what a file is by its content, and check that its suffix agrees."""

from __future__ import annotations

from pathlib import Path

from ..errors import SlideFormatError, SlideReadError

__all__ = ["sniff_content", "check_suffix_matches_content", "SLIDE_SUFFIXES", "CONTENT_NAMES"]

#: Human-readable names of the content kinds `sniff_content` returns.
CONTENT_NAMES = {
    "tiff": "TIFF",
    "jpeg": "a JPEG image",
    "png": "a PNG image",
    "dicom": "DICOM",
    "gif": "a GIF image",
    "zip": "a ZIP archive",
    "pdf": "a PDF document",
    "text": "plain text",
    "ini": "a text index file",
    "empty": "empty (0 bytes)",
    "zeros": "only zero bytes (a damaged or unfinished copy)",
    "unknown": "unrecognised binary data",
}

#: What the content of a file with this suffix must be. ``None``: checked by OpenSlide
#: alone (index files of multi-file formats such as MIRAX and VMS).
_SUFFIX_CONTENT: dict[str, str | None] = {
    ".svs": "tiff",
    ".tif": "tiff",
    ".tiff": "tiff",
    ".ndpi": "tiff",
    ".scn": "tiff",
    ".bif": "tiff",
    ".svslide": "tiff",
    ".qptiff": "tiff",
    ".btf": "tiff",
    ".dcm": "dicom",
    ".jpg": "jpeg",
    ".jpeg": "jpeg",
    ".png": "png",
    ".mrxs": None,
    ".vms": None,
    ".vmu": None,
}

#: Suffixes `open_slide` accepts.
SLIDE_SUFFIXES = tuple(_SUFFIX_CONTENT)

_SUFFIX_FORMAT_NAMES = {
    ".svs": "Aperio SVS",
    ".ndpi": "Hamamatsu NDPI",
    ".scn": "Leica SCN",
    ".bif": "Ventana BIF",
    ".svslide": "Sakura SVSlide",
    ".qptiff": "Akoya QPTIFF",
    ".dcm": "DICOM",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".btf": "BigTIFF",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".png": "PNG",
}


def sniff_content(path: Path) -> str:
    """Return the kind of data a file holds, judged by its first bytes.

    Parameters
    ----------
    path : Path
        An existing file.

    Returns
    -------
    str
        One of the keys of `CONTENT_NAMES`.
    """
    with open(path, "rb") as fh:
        head = fh.read(512)
    if not head:
        return "empty"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if head[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if head[:4] in (b"GIF8",):
        return "gif"
    if head[:4] == b"PK\x03\x04":
        return "zip"
    if head[:5] == b"%PDF-":
        return "pdf"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return "unknown"
    if not text.strip("\x00"):  # all NUL bytes: decodes as text but is a zeroed (damaged) file
        return "zeros"
    if text.lstrip().startswith("[") and "]" in text:
        return "ini"
    return "text"


def check_suffix_matches_content(path: Path) -> str:
    """Check that a slide path exists, is supported, and that its content matches its suffix.

    Parameters
    ----------
    path : Path
        The slide path.

    Returns
    -------
    str
        The sniffed content kind.

    Raises
    ------
    SlideNotFoundError
        The path does not exist.
    SlideFormatError
        The suffix is unsupported, or the content contradicts it.
    SlideReadError
        The file is empty.
    """
    from ._guards import check_regular_file, check_tiff_ifd_chain

    check_regular_file(path)  # before reading a byte: a pipe named x.svs would block forever
    suffix = path.suffix.lower()
    if suffix not in _SUFFIX_CONTENT:
        raise SlideFormatError(
            f"{path.name}: unsupported slide format {suffix or '(no suffix)'!r}; "
            f"supported suffixes: {', '.join(SLIDE_SUFFIXES)}"
        )
    content = sniff_content(path)
    if content == "empty":
        raise SlideReadError(f"{path}: the file is empty (0 bytes); it may be an incomplete copy")
    if content == "tiff":
        check_tiff_ifd_chain(path)  # tifffile would loop forever on a looping chain
    expected = _SUFFIX_CONTENT[suffix]
    if expected is not None and content != expected:
        expected_name = _SUFFIX_FORMAT_NAMES.get(suffix, suffix)
        raise SlideFormatError(
            f"{path}: the suffix {suffix!r} says {expected_name}, but the content is "
            f"{CONTENT_NAMES[content]}; the file is misnamed or not a slide"
        )
    return content
