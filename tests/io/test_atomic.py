"""Atomic writes: nothing half-written on failure, normal file permissions on success."""

from __future__ import annotations

import os
import stat

import pytest

from napari_stpredict.io.atomic import atomic_path


def test_failure_leaves_the_previous_file(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(OSError, match="disk full"):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise OSError("disk full")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_success_replaces_with_a_readable_file(tmp_path):
    target = tmp_path / "new.txt"
    with atomic_path(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"
    if os.name == "posix":
        assert stat.S_IMODE(target.stat().st_mode) & 0o044  # group/others may read, like a plain write
