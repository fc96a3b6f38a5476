"""Shared fixtures: real data in ../shared/data and the bundled sample."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
WSI = SHARED_DATA / "wsi"
HER2ST = SHARED_DATA / "her2st"


def _require(path: Path) -> Path:
    if not path.exists():
        # Locally a missing ../shared is a skip; in CI it must be there.
        if os.environ.get("CI"):
            pytest.fail(f"test data missing in CI: {path}")
        pytest.skip(f"test data not available: {path}")
    return path


@pytest.fixture(scope="session")
def wsi_dir() -> Path:
    return _require(WSI)


@pytest.fixture(scope="session")
def her2st_dir() -> Path:
    return _require(HER2ST)


@pytest.fixture(scope="session")
def sample_slide_path() -> Path:
    from napari_stpredict._resources import SAMPLE_SLIDE, sample_data_dir

    return sample_data_dir() / SAMPLE_SLIDE


@pytest.fixture(scope="session")
def sample_spots_path() -> Path:
    from napari_stpredict._resources import SAMPLE_SPOTS, sample_data_dir

    return sample_data_dir() / SAMPLE_SPOTS
