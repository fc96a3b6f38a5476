"""Spatial context: the neighbour mix on a grid, in the engine, and in the checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_stpredict.inference.context import (
    NEIGHBOUR_OFFSETS,
    mix_with_neighbours,
    neighbour_weights,
    smooth_on_grid,
)


def _by_hand(values, rows, cols, cells, weights):
    """The neighbour mix written out spot by spot (what smooth_on_grid must equal)."""
    where = {(r, c): i for i, (r, c) in enumerate(zip(rows, cols))}
    out = np.empty_like(values, dtype=np.float64)
    for i, (r, c) in enumerate(zip(rows, cols)):
        total, norm = values[i].astype(np.float64), 1.0
        for (dx, dy), w in zip(NEIGHBOUR_OFFSETS, weights):
            j = where.get((r + dy * cells[1], c + dx * cells[0]))
            if j is not None:
                total = total + w * values[j]
                norm += w
        out[i] = total / norm
    return out


def test_weights_follow_the_distance_of_each_neighbour():
    w = neighbour_weights(56.0, 112.0)
    sides = [w[i] for i, (dx, dy) in enumerate(NEIGHBOUR_OFFSETS) if dx * dy == 0]
    corners = [w[i] for i, (dx, dy) in enumerate(NEIGHBOUR_OFFSETS) if dx * dy != 0]
    assert np.allclose(sides, np.exp(-2.0)) and np.allclose(corners, np.exp(-4.0))
    assert not neighbour_weights(0.0, 112.0).any()
    with pytest.raises(ValueError, match="context_sigma_um"):
        neighbour_weights(-1.0, 112.0)


@pytest.mark.parametrize("cells", [(1, 1), (2, 2)])
def test_grid_smoothing_equals_the_mix_written_out(cells):
    rng = np.random.default_rng(0)
    shape = (9, 11)
    keep = rng.random(shape) > 0.3  # holes: cells that are not tissue
    rows, cols = np.nonzero(keep)
    values = rng.normal(size=(len(rows), 10)).astype(np.float32)
    weights = neighbour_weights(56.0, 112.0)
    expected = _by_hand(values, rows, cols, cells, weights)
    got = smooth_on_grid(values.copy(), rows, cols, shape, cells, weights, block=3)
    assert np.allclose(got, expected, atol=1e-5)
    # mix_with_neighbours (evaluation's form) gives the same numbers from the same neighbours
    where = {(r, c): i for i, (r, c) in enumerate(zip(rows, cols))}
    around = np.zeros((8, len(rows), 10), np.float32)
    present = np.zeros((8, len(rows)), bool)
    for o, (dx, dy) in enumerate(NEIGHBOUR_OFFSETS):
        for i, (r, c) in enumerate(zip(rows, cols)):
            j = where.get((r + dy * cells[1], c + dx * cells[0]))
            if j is not None:
                around[o, i], present[o, i] = values[j], True
    assert np.allclose(mix_with_neighbours(values, around, present, weights), expected, atol=1e-5)


def test_no_context_leaves_values_untouched():
    values = np.arange(12, dtype=np.float32).reshape(4, 3)
    out = smooth_on_grid(values.copy(), np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1]), (2, 2), (1, 1), np.zeros(8))
    assert np.array_equal(out, values)


@pytest.mark.slow
@pytest.mark.parametrize("stride_um", [None, 56.0])
def test_engine_applies_the_context_to_the_predicted_grid(sample_slide_path, tiny_model, stride_um):
    """The engine's map is its per-patch map mixed with the patches one patch width away
    (every second cell at half the patch width), and records the setting."""
    from napari_stpredict.inference import run_prediction
    from napari_stpredict.io.slide import open_slide

    with open_slide(sample_slide_path) as slide:
        plain = run_prediction(slide, tiny_model, stride_um=stride_um, context_sigma_um=0.0)
        mixed = run_prediction(slide, tiny_model, stride_um=stride_um, context_sigma_um=56.0)
    obs = plain.adata.obs
    cells = (1, 1) if stride_um is None else (2, 2)
    expected = _by_hand(
        np.asarray(plain.adata.X),
        obs["grid_row"].to_numpy(),
        obs["grid_col"].to_numpy(),
        cells,
        neighbour_weights(56, 112),
    )
    assert np.allclose(np.asarray(mixed.adata.X), expected, atol=1e-4)
    assert not np.allclose(np.asarray(mixed.adata.X), np.asarray(plain.adata.X))
    assert mixed.adata.uns["stpredict"]["model"]["context_sigma_um"] == 56.0
    assert plain.adata.uns["stpredict"]["model"]["context_sigma_um"] == 0.0
    # the per-spot confidence is the patch's own retrieval similarity, not mixed
    assert np.allclose(mixed.adata.obs["confidence"], obs["confidence"])


@pytest.mark.slow
def test_engine_defaults_to_the_model_settings(sample_slide_path, tiny_model_path, tmp_path):
    """A checkpoint's retrieval settings are what the engine uses unless told otherwise;
    a checkpoint written before they existed reads as top-k 50 without context."""
    from napari_stpredict.inference import run_prediction
    from napari_stpredict.io.slide import open_slide
    from napari_stpredict.model import RetrievalSettings, load_model

    data = torch.load(tiny_model_path, map_location="cpu", weights_only=True)
    del data["retrieval"]
    old = tmp_path / "old.pt"
    torch.save(data, old)
    assert load_model(old, device="cpu").retrieval == RetrievalSettings(top_k=50, context_sigma_um=0.0)
    data["retrieval"] = {"top_k": 20, "context_sigma_um": 56.0}
    new = tmp_path / "new.pt"
    torch.save(data, new)
    model = load_model(new, device="cpu")
    with open_slide(sample_slide_path) as slide:
        default = run_prediction(slide, model)
        explicit = run_prediction(slide, model, top_k=20, context_sigma_um=56.0)
    assert default.adata.uns["stpredict"]["model"]["top_k"] == 20
    assert np.array_equal(np.asarray(default.adata.X), np.asarray(explicit.adata.X))


@pytest.mark.parametrize(
    ("stored", "message"),
    [
        ({"top_k": 0, "context_sigma_um": 0.0}, "retrieval.top_k"),
        ({"top_k": 50, "context_sigma_um": -3.0}, "retrieval.context_sigma_um"),
        ({"top_k": 50, "context_sigma_um": float("nan")}, "retrieval.context_sigma_um"),
        ({"top_k": 50, "smoothing": 1}, "unknown RetrievalSettings keys: smoothing"),
    ],
)
def test_bad_retrieval_settings_are_refused_naming_the_file(tiny_model_path, tmp_path, stored, message):
    from napari_stpredict.model import CheckpointError, read_checkpoint

    data = torch.load(tiny_model_path, map_location="cpu", weights_only=True)
    data["retrieval"] = stored
    bad = tmp_path / "bad.pt"
    torch.save(data, bad)
    with pytest.raises(CheckpointError, match=message) as info:
        read_checkpoint(bad)
    assert "bad.pt" in str(info.value)


def test_bad_context_setting_fails_before_any_slow_work(sample_slide_path, tiny_model):
    from napari_stpredict.inference import predict_slide
    from napari_stpredict.io.slide import open_slide

    with open_slide(sample_slide_path) as slide, pytest.raises(ValueError, match="context_sigma_um"):
        next(predict_slide(slide, tiny_model, context_sigma_um=-5))
