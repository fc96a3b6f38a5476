"""GridGeometry: the spot grid's formula, once (cells, centres, sampling, sub-cells, metadata)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_stpredict.grid import GridGeometry


def test_centres_and_cells_are_inverse_and_cells_span_half_a_stride():
    grid = GridGeometry.of([100.5, 40.0], [162.8, 160.0], [3, 4])
    for row, col in [(0, 0), (2, 3), (1, 2)]:
        x, y = grid.centre_of(row, col)
        # anywhere within half a stride of the centre is the same cell
        for dx, dy in [(0, 0), (81.3, -79.9), (-81.3, 79.9)]:
            rows, cols = grid.cell_of([[x + dx, y + dy]])
            assert (rows[0], cols[0]) == (row, col)
        rows, cols = grid.cell_of([[x + 81.5, y]])
        assert cols[0] == col + 1
    assert not grid.inside(*grid.cell_of([[100.5 - 90, 40.0]]))[0]


def test_place_and_sample_round_trip_with_nan_off_the_grid():
    grid = GridGeometry.of([0, 0], [10, 10], [2, 3])
    raster = grid.place(np.array([0, 1]), np.array([2, 0]), np.array([5.0, 7.0]))
    assert raster.shape == (2, 3) and raster.dtype == np.float32
    assert np.isnan(raster[0, 0]) and raster[0, 2] == 5.0 and raster[1, 0] == 7.0
    values = grid.sample(raster, [[20, 0], [0, 10], [500, 500], [-6, 0]])
    assert values[0] == 5.0 and values[1] == 7.0 and np.isnan(values[2:]).all()


def test_subdivided_grid_has_the_cell_centre_as_its_middle_sub_cell():
    grid = GridGeometry.of([50, 20], [10, 8], [2, 2])
    fine = grid.subdivided(5)
    assert fine.shape == (10, 10) and fine.stride == (2.0, 1.6)
    assert fine.centre_of(2, 2) == pytest.approx(grid.centre_of(0, 0))
    assert fine.centre_of(7, 7) == pytest.approx(grid.centre_of(1, 1))
    # the sub-cells tile the cell: the first starts where the cell starts
    assert fine.origin[0] - fine.stride[0] / 2 == pytest.approx(grid.origin[0] - grid.stride[0] / 2)


def test_metadata_round_trip_and_bad_grids_refused():
    grid = GridGeometry.of(np.array([1.5, 2.5]), (3, 4), [5, 6])
    meta = grid.to_meta()
    assert meta == {"grid_origin_l0": [1.5, 2.5], "grid_stride_l0": [3.0, 4.0], "grid_shape": [5, 6]}
    assert GridGeometry.from_meta(meta) == grid
    with pytest.raises(ValueError, match="stride must be positive"):
        GridGeometry.of([0, 0], [0, 1], [1, 1])


def test_a_prediction_and_its_heatmap_share_the_grid(sample_slide_path, tiny_model):
    from napari_stpredict.inference import run_prediction
    from napari_stpredict.io.slide import open_slide

    sample_prediction = run_prediction(open_slide(sample_slide_path), tiny_model, batch_size=32, stride_um=224.0)
    heat = sample_prediction.heatmap(sample_prediction.genes[0])
    assert heat.grid == sample_prediction.grid
    obs = sample_prediction.adata.obs
    rows, cols = sample_prediction.grid.cell_of(sample_prediction.l0_centres)
    assert (rows == obs["grid_row"].to_numpy()).all() and (cols == obs["grid_col"].to_numpy()).all()
