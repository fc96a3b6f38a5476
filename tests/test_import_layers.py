"""The package's floors: every import (module-level or inside a function) goes down or
sideways, never back up, and the display never imports training (docs/ARCHITECTURE.md).

Run on its own: ``python -m pytest tests/test_import_layers.py``. It reads the source with
``ast`` (nothing is imported), so it also sees the imports that run only on first use.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "napari_stpredict"

#: Floor of each top-level module or subpackage of napari_stpredict, from the ground up.
FLOORS = {
    # ground: no import of another floor
    "errors": 0,
    "_version": 0,
    "vocabulary": 0,
    "grid": 0,
    "_progress": 0,
    "_resources": 0,
    "placement": 0,
    # slides, ST tables and their geometry
    "io": 1,
    "tiling": 1,
    "tissue": 1,
    "stain": 1,
    # the network, its checkpoints and cards
    "model": 2,
    # the engine: whole-slide prediction, its result, tumour calls, exports
    "inference": 3,
    # two rooms side by side on floor 4, which must not import each other
    "training": 4,
    "layers": 4,
    "analysis": 4,
    # applications: napari contributions, the dock, cohorts
    "_reader": 5,
    "_writer": 5,
    "_results_reader": 5,
    "_sample_data": 5,
    "_qt": 5,
    "cohort": 5,
    # the command line and the package's lazy facade
    "cli": 6,
    "__init__": 6,
}

DISPLAY = {"layers", "analysis", "_qt", "_reader", "_writer", "_results_reader", "_sample_data"}


def _room(module: str) -> str:
    """``napari_stpredict.io.slide`` -> ``io``; the package itself -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """``(line, imported module)`` of every import in the file, relative ones resolved."""
    here = _module_name(path)
    package = here if path.name == "__init__.py" else here.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.startswith("napari_stpredict")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("napari_stpredict"):
                continue
            if target == "napari_stpredict":  # from napari_stpredict import x, from .. import x
                out += [(node.lineno, f"napari_stpredict.{a.name}") for a in node.names]
            else:
                out.append((node.lineno, target))
    return out


def import_violations() -> list[str]:
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        here = _module_name(path)
        room = _room(here)
        assert room in FLOORS, f"{path}: module {room!r} has no floor in tests/test_import_layers.py"
        for line, target in _imports(path):
            other = _room(target)
            if other == room:
                continue
            assert other in FLOORS, f"{path}:{line}: imports {target}, whose room has no floor"
            where = f"{path.relative_to(PACKAGE.parent)}:{line} ({room}, floor {FLOORS[room]}) imports {target}"
            if other == "__init__":
                problems.append(f"{where}: the package facade (take the name from its own module)")
            elif FLOORS[other] > FLOORS[room]:
                problems.append(f"{where} (floor {FLOORS[other]}): back up a floor")
            elif room in DISPLAY and other == "training":
                problems.append(f"{where}: the display imports training")
            elif room == "training" and other in DISPLAY:
                problems.append(f"{where}: training imports the display")
    return problems


def test_no_import_runs_back_up_a_floor():
    problems = import_violations()
    assert not problems, "\n".join(problems)


def test_the_check_sees_function_level_and_relative_imports(tmp_path):
    """The parser resolves ``from ..x import y`` inside a function (where the lazy imports
    live), so a back-up import hidden there would be found."""
    source = PACKAGE / "inference" / "job.py"
    targets = {t for _, t in _imports(source)}
    assert "napari_stpredict.io.output_folder" in targets  # imported inside predict_to_folder
    assert "napari_stpredict.vocabulary" in targets  # module level, relative


#: Modules are split by job before they grow past this (issue 22).
MAX_MODULE_LINES = 450


def test_no_module_is_over_450_lines():
    long = {
        path.relative_to(PACKAGE).as_posix(): n
        for path in PACKAGE.rglob("*.py")
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    }
    assert not long, f"split these by job: {long}"
