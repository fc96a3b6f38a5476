"""Import timm/torchvision safely inside a napari process.

With torch's CUDA build, torchvision imports triton, whose bundled LLVM clashes with
Mesa's llvmpipe (software OpenGL: Xvfb, remote desktops, VMs) and segfaults if a napari
viewer already exists. Nothing here needs triton, so it is blocked before the first
torchvision/timm import. Import timm only through `import_timm`.
"""

from __future__ import annotations

import sys

__all__ = ["import_timm"]


def import_timm():
    """Return the ``timm`` module, imported with triton disabled unless already loaded."""
    if "timm" not in sys.modules and "triton" not in sys.modules:
        sys.modules["triton"] = None  # type: ignore[assignment,unused-ignore]  # makes `import triton` fail cleanly
    import timm

    return timm
