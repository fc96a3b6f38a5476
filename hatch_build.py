"""Hatch build hook: make the top-level npe2 manifest resolvable in editable installs.

npe2 resolves ``napari_stpredict:napari.yaml`` inside the package folder. Wheels get the
file through ``force-include``; an editable install points at ``src/`` instead, so this
hook copies the manifest there (the copy is git-ignored; a test checks it is current).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


class CustomBuildHook(BuildHookInterface):
    def initialize(self, version: str, build_data: dict) -> None:
        if version != "editable":
            return
        root = Path(self.root)
        shutil.copyfile(root / "napari.yaml", root / "src" / "napari_stpredict" / "napari.yaml")
