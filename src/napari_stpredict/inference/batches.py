"""Step 4 of `predict_slide`: the spots' expression, batch by batch.

Patches are read by worker threads (slide readers release the GIL while decoding) a few
batches ahead of the model, so reading overlaps with compute. On the CPU several batches
run side by side with fewer torch threads each (`napari_stpredict.model.precision.
model_workers_for`); on a GPU one batch at a time. Results land in preallocated arrays in
spot order, and progress is reported in that order, so the output does not depend on
which batch finished first.
"""

from __future__ import annotations

import contextlib
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout

import numpy as np

from ..errors import PredictionCancelled

__all__ = ["predict_spots"]


def predict_spots(
    slide, model, grid, method, top_k, slide_adaptation, batch_size, num_workers, prefetch_batches, cancel_event
):
    """Each spot's expression, confidence and domain distance (a generator of progress).

    Returns ``(expression, confidence, distance)`` via ``StopIteration.value``. A cancel is
    answered between batches (within one batch's time); batches already running finish
    and are discarded.
    """
    import torch

    from ..io.patches import read_patches
    from ..model.precision import kernel_threads, model_workers_for

    io = model.io
    n = len(grid)
    starts = list(range(0, n, batch_size))
    expression = np.empty((n, len(model.genes)), np.float32)
    confidence = np.empty(n, np.float32)
    distance = np.full(n, np.nan, np.float32)

    def read(start: int) -> np.ndarray:
        return read_patches(slide, grid.l0_centres[start : start + batch_size], io.patch_um, io.input_px)

    def compute(start: int, patches: Future) -> int:
        batch = patches.result()
        with torch.inference_mode():
            emb, features = model.embed_with_features(batch, adaptation=slide_adaptation)
            pred, conf = model.predict_embeddings(emb, method=method, top_k=top_k)
            dist = model.domain_distance(features)
        stop = start + len(batch)
        expression[start:stop] = pred.cpu().numpy()
        confidence[start:stop] = conf.cpu().numpy()
        if dist is not None:
            distance[start:stop] = dist.cpu().numpy()
        return stop

    workers, threads_each = model_workers_for(model.device)
    workers = min(workers, len(starts))
    readers = ThreadPoolExecutor(max_workers=max(1, num_workers), thread_name_prefix="stpredict-read")
    computers = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="stpredict-model") if workers > 1 else None
    threads = contextlib.ExitStack()
    if computers is not None:
        # torch's thread count is process-wide and read by each thread when it first runs a
        # kernel: set before the model threads start, restored when the prediction ends.
        threads.enter_context(kernel_threads(threads_each))
    reads: deque[tuple[int, Future]] = deque()
    running: deque[Future] = deque()
    next_read = 0
    try:
        in_flight = prefetch_batches + workers
        done = 0
        while done < n:
            while next_read < len(starts) and len(reads) + len(running) < in_flight:
                reads.append((starts[next_read], readers.submit(read, starts[next_read])))
                next_read += 1
            if computers is None:
                _check_cancel(cancel_event, slide.name, done, n)
                start, patches = reads.popleft()
                done = compute(start, patches)
            else:
                while reads and len(running) < workers:
                    running.append(computers.submit(compute, *reads.popleft()))
                done = _wait(running.popleft(), cancel_event, slide.name, done, n)
            yield {"stage": "predict", "done": done, "total": n}
    finally:
        for _, future in reads:
            future.cancel()
        for future in running:
            future.cancel()
        if computers is not None:
            computers.shutdown(wait=True, cancel_futures=True)
        threads.close()
        readers.shutdown(wait=True, cancel_futures=True)
    return expression, confidence, distance


def _wait(future: Future, cancel_event, slide_name: str, done: int, n: int) -> int:
    """The result of a batch, checking for a cancel every tenth of a second meanwhile."""
    while True:
        _check_cancel(cancel_event, slide_name, done, n)
        with contextlib.suppress(FuturesTimeout):
            return future.result(timeout=0.1)


def _check_cancel(cancel_event, slide_name: str, done: int, n: int) -> None:
    if cancel_event is not None and cancel_event.is_set():
        raise PredictionCancelled(f"{slide_name}: prediction cancelled after {done} of {n} spots")
