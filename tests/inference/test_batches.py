"""The batch step on the CPU: batches side by side give the single-batch answer, and the
process's torch thread count is given back, also after a cancel."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from napari_stpredict.inference import PredictionCancelled, predict_slide, run_prediction
from napari_stpredict.io.slide import open_slide
from napari_stpredict.model import load_model
from napari_stpredict.model.precision import MAX_CPU_MODEL_WORKERS, model_workers_for


def test_cpu_runs_batches_side_by_side_within_the_users_thread_limit():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert model_workers_for(cpu, 2) == (2, 1)
    assert model_workers_for(cpu, 1) == (1, 1)  # OMP_NUM_THREADS=1: one batch, one thread
    assert model_workers_for(cpu, 16) == (MAX_CPU_MODEL_WORKERS, 16 // MAX_CPU_MODEL_WORKERS)
    assert model_workers_for(cuda, 16)[0] == 1  # the GPU runs the batch; the host only queues it


@pytest.mark.slow
def test_batches_side_by_side_equal_one_at_a_time(sample_slide_path, monkeypatch):
    """The bundled model on the sample: the same spots, maps within float32 rounding of a
    run with one batch at a time, and torch's thread count as it was before."""
    import napari_stpredict.model.precision as precision

    model = load_model(device="cpu")
    before = torch.get_num_threads()
    with open_slide(sample_slide_path) as slide:
        monkeypatch.setattr(precision, "model_workers_for", lambda device, kernel_threads=None: (2, 1))
        side_by_side = run_prediction(slide, model, batch_size=32)
        assert torch.get_num_threads() == before
        monkeypatch.setattr(precision, "model_workers_for", lambda device, kernel_threads=None: (1, before))
        one_at_a_time = run_prediction(slide, model, batch_size=32)
    np.testing.assert_array_equal(side_by_side.l0_centres, one_at_a_time.l0_centres)
    np.testing.assert_allclose(side_by_side.adata.X, one_at_a_time.adata.X, atol=1e-4)
    np.testing.assert_allclose(side_by_side.adata.obs["confidence"], one_at_a_time.adata.obs["confidence"], atol=1e-5)


def test_a_cancel_with_batches_side_by_side_answers_and_restores_threads(sample_slide_path, tiny_model, monkeypatch):
    import napari_stpredict.model.precision as precision

    monkeypatch.setattr(precision, "model_workers_for", lambda device, kernel_threads=None: (2, 1))
    before = torch.get_num_threads()
    cancel = threading.Event()
    with open_slide(sample_slide_path) as slide:
        gen = predict_slide(slide, tiny_model, batch_size=16, cancel_event=cancel)
        while next(gen)["stage"] != "predict":
            pass
        cancel.set()
        with pytest.raises(PredictionCancelled, match="cancelled after"):
            while True:
                next(gen)
    assert torch.get_num_threads() == before


def test_overlapping_thread_settings_give_the_users_count_back_once_both_end():
    from napari_stpredict.model.precision import kernel_threads

    before = torch.get_num_threads()
    first = kernel_threads(1)
    first.__enter__()
    with kernel_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 1  # the first prediction still runs
    first.__exit__(None, None, None)
    assert torch.get_num_threads() == before
