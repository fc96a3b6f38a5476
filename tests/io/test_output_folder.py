"""Output folders never lose what the product did not write (reliability round 3)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from napari_stpredict.io.output_folder import (
    JOURNAL,
    MARKER,
    ForeignFolderError,
    check_output_folder,
    is_complete_output,
    output_folder,
    product_files,
)


def _write(folder: Path, **files: str) -> None:
    for name, text in files.items():
        (folder / name).write_text(text)


def test_a_rerun_keeps_the_users_files_and_replaces_only_the_products(tmp_path):
    target = tmp_path / "slide"
    with output_folder(target) as tmp:
        _write(tmp, **{"a.tif": "old", "b.tif": "old"})
    (target / "notes.txt").write_text("my notes")
    (target / "qupath").mkdir()
    (target / "qupath" / "export.geojson").write_text("{}")
    with output_folder(target) as tmp:
        _write(tmp, **{"a.tif": "new", "c.tif": "new"})
    names = sorted(p.name for p in target.iterdir())
    assert names == sorted([MARKER, "a.tif", "c.tif", "notes.txt", "qupath"])  # b.tif was the product's
    assert (target / "a.tif").read_text() == "new"
    assert (target / "notes.txt").read_text() == "my notes"
    assert (target / "qupath" / "export.geojson").read_text() == "{}"
    assert product_files(target) == {"a.tif", "c.tif"}
    assert is_complete_output(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["slide"]  # no temporary folder left


def test_a_folder_the_product_did_not_write_is_refused_untouched(tmp_path):
    target = tmp_path / "slide"
    target.mkdir()
    (target / "precious.txt").write_text("keep")
    with pytest.raises(ForeignFolderError, match=r"slide.*not written by napari-stpredict"):
        with output_folder(target) as tmp:
            _write(tmp, x="1")
    assert sorted(p.name for p in target.iterdir()) == ["precious.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["slide"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with output_folder(empty) as tmp:  # an empty folder the user made is fine
        _write(tmp, x="1")
    assert (empty / "x").read_text() == "1"


def test_a_folder_holding_an_input_is_refused(tmp_path):
    case = tmp_path / "cases" / "CMU"
    case.mkdir(parents=True)
    slide = case / "CMU.svs"
    slide.write_bytes(b"slide")
    with pytest.raises(ForeignFolderError, match="holds the input"):
        check_output_folder(case, [slide])
    assert slide.read_bytes() == b"slide"


def test_a_killed_swap_reads_as_incomplete_and_is_ours_for_the_next_run(tmp_path):
    target = tmp_path / "slide"
    with output_folder(target) as tmp:
        _write(tmp, **{"a.tif": "old"})
    (target / "notes.txt").write_text("mine")
    # What a kill in the middle of the swap leaves: the journal, no marker, a mix of files.
    listing = json.loads((target / MARKER).read_text())
    (target / JOURNAL).write_text(json.dumps({**listing, "files": ["a.tif", "b.tif"]}))
    (target / MARKER).unlink()
    (target / "b.tif").write_text("new, half done")
    assert not is_complete_output(target)
    assert product_files(target) == {"a.tif", "b.tif"}
    check_output_folder(target)  # not refused
    with output_folder(target) as tmp:
        _write(tmp, **{"a.tif": "new"})
    assert sorted(p.name for p in target.iterdir()) == sorted([MARKER, "a.tif", "notes.txt"])
    assert is_complete_output(target)


def test_listing_names_never_reach_outside_the_folder(tmp_path):
    target = tmp_path / "slide"
    target.mkdir()
    outside = tmp_path / "outside.txt"
    outside.write_text("keep")
    (target / MARKER).write_text(
        json.dumps({"product": "napari-stpredict", "files": ["../outside.txt", "..", "/etc/passwd", "ok.tif"]})
    )
    assert product_files(target) == {"ok.tif"}
    with output_folder(target) as tmp:
        _write(tmp, x="1")
    assert outside.read_text() == "keep"


def test_a_folder_written_by_0_1_0_is_recognised(tmp_path):
    target = tmp_path / "slide"
    target.mkdir()
    _write(target, **{"prediction.h5ad": "", "ERBB2.tif": "", "overview.png": ""})
    (target / "config.yaml").write_text("napari_stpredict: 0.1.0\ngenes: [ERBB2]\n")
    (target / "notes.txt").write_text("mine")
    assert "ERBB2.tif" in product_files(target)
    with output_folder(target) as tmp:
        _write(tmp, **{"prediction.h5ad": "new"})
    assert sorted(p.name for p in target.iterdir()) == sorted([MARKER, "prediction.h5ad", "notes.txt"])


_WRITER = """
import sys, time
from pathlib import Path
from napari_stpredict.io.output_folder import output_folder
target, tag = Path(sys.argv[1]), sys.argv[2]
time.sleep(max(0.0, float(sys.argv[3]) - time.time()))  # start together
for _ in range(20):
    with output_folder(target) as tmp:
        for k in range(5):
            (tmp / f"f{k}.txt").write_text(tag)
        time.sleep(0.01)
"""


@pytest.mark.slow
def test_two_concurrent_writers_both_succeed_and_the_folder_is_whole(tmp_path):
    target = tmp_path / "slide"
    start = time.time() + 2.0
    procs = [
        subprocess.Popen([sys.executable, "-c", _WRITER, str(target), tag, str(start)], stderr=subprocess.PIPE)
        for tag in ("A", "B")
    ]
    errors = [p.communicate(timeout=120)[1].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    assert sorted(p.name for p in target.iterdir()) == sorted([MARKER] + [f"f{k}.txt" for k in range(5)])
    assert is_complete_output(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["slide"]  # no temporary folder, no lock


def test_a_running_writers_temporary_folder_is_not_taken_for_a_stale_one(tmp_path):
    from napari_stpredict.io.output_folder import _owner

    target = tmp_path / "slide"
    mine = tmp_path / f".slide.partial-{_owner()}-abcd"  # this process: alive
    mine.mkdir()
    dead = tmp_path / ".slide.partial-00000000_999999999-abcd"  # another host, old
    dead.mkdir()
    legacy = tmp_path / ".slide.partial-killed"  # what 0.1.0 left
    legacy.mkdir()
    with output_folder(target) as tmp:
        _write(tmp, x="1")
    left = sorted(p.name for p in tmp_path.iterdir())
    assert mine.name in left and legacy.name not in left
    assert dead.name in left  # another host's, changed within a day: it may be running there


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    import hashlib
    import socket

    target = tmp_path / "slide"
    with output_folder(target) as tmp:
        _write(tmp, x="1")
    host = hashlib.sha1(socket.gethostname().encode("utf-8")).hexdigest()[:8]
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (target / ".stpredict-output.lock").write_text(f"{host}_{int(dead.stdout)}")
    started = time.monotonic()
    with output_folder(target) as tmp:
        _write(tmp, x="2")
    assert time.monotonic() - started < 5
    assert (target / "x").read_text() == "2" and not (target / ".stpredict-output.lock").exists()
