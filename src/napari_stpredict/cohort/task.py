"""What runs on a Dask worker: the model, loaded once per worker process, and one slide's task.

`ModelPlugin` is registered with the client; Dask runs its ``setup`` on every worker,
including workers that join later or replace a dead one, so a task only looks the model
up (the model is never pickled with a task). `run_slide` predicts one slide into its
output folder, with the completion record and a thumbnail tile for the cohort overview
written inside the same atomic folder.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from distributed import WorkerPlugin

from .record import TILE_NAME

__all__ = ["ModelPlugin", "run_slide"]

TILE_SIZE = 320


class ModelPlugin(WorkerPlugin):
    """Dask worker plugin that loads the model once per worker process.

    Parameters
    ----------
    model_path : Path
        The checkpoint (on storage every worker can read).
    device : str
        ``auto`` (CUDA > MPS > CPU; with several GPUs on one machine, worker ``i`` of a
        `LocalCluster` takes GPU ``i mod n``), or a torch device name.
    quiet_when_scheduler_closes : bool
        For the `LocalCluster` a command starts (its scheduler lives in the command's own
        process): drop the worker's heartbeat tracebacks logged when the command closes the
        scheduler while a slide is still running (Ctrl-C), so the terminal keeps the one
        line that says what happened. Left off for a cluster the user runs, where a lost
        scheduler is news.
    torch_threads : int, optional
        Threads for torch's CPU kernels in each worker (so workers sharing a machine do
        not oversubscribe its cores). Default: all the cores of the worker's machine,
        right for the one-worker-per-node (or per-GPU) set-up the README recommends;
        without it a Dask worker would run torch on one thread (Dask sets
        ``OMP_NUM_THREADS=1`` in its workers).
    """

    def __init__(
        self,
        model_path: Path,
        device: str = "auto",
        torch_threads: int | None = None,
        quiet_when_scheduler_closes: bool = False,
    ) -> None:
        self.model_path = Path(model_path)
        self.quiet_when_scheduler_closes = quiet_when_scheduler_closes
        self.device = device
        self.torch_threads = torch_threads
        self.name = f"napari-stpredict-model-{_short(self.model_path)}-{device}"
        self.model = None

    def setup(self, worker) -> None:
        """Load the model (runs in the worker process)."""
        import logging
        import sys

        sys.modules.setdefault("triton", None)  # the known software-OpenGL crash; harmless here
        # tifffile logs structural oddities on the way to an error of ours that says it
        # better (the slide's row gets ours); keep the terminal to the cohort's progress.
        logging.getLogger("tifffile").setLevel(logging.ERROR)
        if self.quiet_when_scheduler_closes:
            logging.getLogger("distributed.worker").addFilter(_drop_heartbeat_failures)
        import torch

        from ..model import load_model

        # Applied by each task in its own thread (see `run_slide`): torch's thread count
        # set here, in the worker's event-loop thread, would not reach the executor's.
        self.torch_threads = self.torch_threads or os.cpu_count() or 1
        device = self.device
        if device == "auto" and torch.cuda.is_available() and torch.cuda.device_count() > 1:
            index = worker.name if isinstance(worker.name, int) else 0
            device = f"cuda:{index % torch.cuda.device_count()}"
        self.model = load_model(self.model_path, device=device)

    def teardown(self, worker) -> None:
        """Free the model."""
        self.model = None


def _drop_heartbeat_failures(record) -> bool:
    """Logging filter: False for the worker's "Failed to communicate with scheduler" records."""
    return not record.getMessage().startswith("Failed to communicate with scheduler")


def _short(path: Path) -> str:
    import hashlib

    return hashlib.sha1(str(path.resolve()).encode("utf-8")).hexdigest()[:10]


def run_slide(job: dict[str, Any], options, plugin_name: str) -> dict[str, Any]:
    """Predict one slide of a cohort into its folder; runs in a worker.

    Parameters
    ----------
    job : dict
        ``id``, ``path``, ``given_as``, ``mpp``, ``folder`` (the slide's output folder),
        ``fingerprint``, ``gene`` (shown in the tile) and ``shown_as`` (a pseudonym
        replacing the slide's name in the outputs, or None).
    options : PredictOptions
    plugin_name : str
        The registered `ModelPlugin`'s name.

    Returns
    -------
    dict
        The slide's row: ``status`` ``done`` with `slide_summary`'s figures, or ``failed``
        with ``error`` for a slide that cannot be read or predicted (returned rather than
        raised: Dask retries only what a dead worker left, never a bad slide).
    """
    from distributed import get_worker

    from ..errors import StPredictError
    from ..inference.job import predict_to_folder, slide_summary
    from .record import write_record

    worker = get_worker()
    plugin = worker.plugins[plugin_name]
    import torch

    # Set in the task's own thread: Dask starts workers with OMP_NUM_THREADS=1, and torch's
    # OpenMP thread count is per calling thread.
    torch.set_num_threads(plugin.torch_threads)
    started = time.perf_counter()
    row: dict[str, Any] = {"id": job["id"], "worker": _worker_label(worker)}

    def extra(folder: Path, slide, prediction, mask) -> None:
        summary = slide_summary(prediction, mask, options.chosen_genes(plugin.model))
        row.update(status="done", error="", **summary)
        limits = _write_tile(folder / TILE_NAME, slide, prediction, job["gene"], mask)
        write_record(
            folder,
            {
                "fingerprint": job["fingerprint"],
                "id": job["id"],
                "tile": {"gene": job["gene"], "limits": limits},
                "row": {**row, "seconds": round(time.perf_counter() - started, 2)},
                "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            },
        )

    try:
        predict_to_folder(
            Path(job["path"]),
            plugin.model,
            plugin.model_path,
            options,
            Path(job["folder"]),
            mpp=job.get("mpp"),
            shown_as=job.get("shown_as"),
            also_write=extra,
        )
    except (StPredictError, ValueError, OSError, MemoryError) as exc:
        row.update(status="failed", error=_one_line(exc, job["path"], job.get("shown_as") or job["given_as"]))
    row["seconds"] = round(time.perf_counter() - started, 2)
    return row


def _worker_label(worker) -> str:
    return f"{worker.name}@{worker.address.split('://')[-1]} pid {os.getpid()}"


def _one_line(exc: Exception, path: str, shown_as: str) -> str:
    """The error naming the slide as ``shown_as`` only: the path as the user gave it (the
    table keeps only theirs), or its pseudonym, which must not be undone by a message that
    names the file."""
    message = " ".join(str(exc).split()) or type(exc).__name__
    file = Path(path)
    for name in dict.fromkeys([str(file.resolve()), str(file), file.name]):
        message = message.replace(name, shown_as)
    return message


def _write_tile(path: Path, slide, prediction, gene: str, mask) -> list[float]:
    """A small thumbnail with ``gene``'s heatmap (the model's fixed colour range) and the
    tumour contour: one cell of cohort_overview.png. Returns the colour limits."""
    from PIL import Image

    from ..inference.colours import colour_limits, has_fixed_range
    from ..inference.overview import overview_image

    heat = prediction.heatmap(gene)
    fixed = has_fixed_range(prediction)
    limits = colour_limits(prediction, gene, fixed=fixed)
    image = overview_image(slide, heat, mask.raster, max_size=TILE_SIZE, limits=limits)
    Image.fromarray(image).save(path, format="PNG")
    return [round(float(v), 4) for v in limits]
