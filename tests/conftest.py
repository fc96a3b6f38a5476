"""Shared fixtures: real data in ../shared/data, the bundled sample, a tiny real model."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
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


_SKIPPED: list[str] = []


def pytest_runtest_logreport(report):
    """Remember skips; in CI only platform skips (reason "platform: ...") are allowed."""
    if report.skipped and report.when in ("setup", "call"):
        reason = str(report.longrepr[2]) if isinstance(report.longrepr, tuple) else str(report.longrepr)
        if "platform:" not in reason:
            _SKIPPED.append(f"{report.nodeid}: {reason}")


def pytest_sessionfinish(session, exitstatus):
    """In CI a skipped test hides a failure (e.g. data that should be there): fail the run."""
    if os.environ.get("CI") and _SKIPPED and exitstatus == 0:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"CI: {len(_SKIPPED)} test(s) skipped; in CI every test must run:", red=True)
            for line in _SKIPPED:
                reporter.write_line(f"  {line}", red=True)
        session.exitstatus = 1


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


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory):
    import torch

    from napari_stpredict.model import IOContract, ModelConfig, create_model, fit_ridge, save_checkpoint

    genes = ["ERBB2", "GRB7", "EPCAM", "CD24", "SCD", "MUCL1", "IGKC", "COL1A1"]
    torch.manual_seed(0)
    model = create_model(ModelConfig(n_genes=len(genes), img_size=32)).eval()
    rng = np.random.default_rng(0)
    expr = torch.from_numpy(rng.gamma(2.0, 1.0, (200, len(genes))).astype(np.float32))
    with torch.no_grad():
        emb = model.encode_expression(expr)
    ridge = fit_ridge(rng.normal(size=(200, 256)), expr.numpy())
    path = tmp_path_factory.mktemp("tiny") / "tiny.pt"
    save_checkpoint(
        path,
        model=model,
        io=IOContract(patch_um=112.0, input_px=32, genes=genes),
        bank_embeddings=emb,
        bank_expression=expr,
        ridge=ridge,
        provenance={"train_sections": [], "markers": {"panel": ["ERBB2", "GRB7", "EPCAM"]}},
    )
    return path


@pytest.fixture(scope="session")
def tiny_model(tiny_model_path):
    from napari_stpredict.model import load_model

    return load_model(tiny_model_path, device="cpu")


def predict_cli(slide, model_path, *options: str) -> int:
    """Run ``stpredict predict SLIDE --model MODEL OPTIONS...`` in-process; return its exit status."""
    from napari_stpredict.cli import main

    return main(["predict", str(slide), "--model", str(model_path), *options])


def pytest_collection_modifyitems(config, items):
    """The fast lane (``scripts/test.sh --fast``, i.e. ``pytest -m "not slow"``): viewer
    tests (Xvfb, napari) and Dask cluster tests are slow by nature; the rest mark
    themselves with ``@pytest.mark.slow`` when they take more than ~2 s on 2 cores (measured
    with ``--durations``), so the lane stays a development loop of a few minutes."""
    for item in items:
        parts = Path(str(item.fspath)).parts
        if "_qt" in parts:
            item.add_marker(pytest.mark.viewer)
            item.add_marker(pytest.mark.slow)
        elif "cohort" in parts:
            item.add_marker(pytest.mark.slow)
