"""The cohort's Dask side: a cluster started or joined, one task per slide submitted, the
rows collected as tasks finish, and a scheduler that goes away turned into rows that say
how to resume (slides whose folders a worker completed count as done).

``distributed`` is imported only inside these functions: planning a rerun with nothing to
recompute never starts a cluster.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Any

__all__ = ["default_workers", "submit_all"]

logger = logging.getLogger("napari_stpredict.cohort")


def default_workers() -> tuple[int, int]:
    """``(workers, threads per worker)`` for a `LocalCluster` on this machine.

    One worker per GPU when CUDA is present; otherwise a few processes sharing the cores
    (a slide keeps about 4 cores busy: torch's kernels plus patch reading), at least one.
    """
    import torch

    cores = os.cpu_count() or 1
    if torch.cuda.is_available():
        gpus = torch.cuda.device_count()
        return gpus, max(1, cores // gpus)
    workers = max(1, min(8, cores // 4))
    return workers, max(1, cores // workers)


def submit_all(
    jobs,
    options,
    model_path: Path,
    rows,
    *,
    client,
    scheduler,
    workers,
    threads_per_worker,
    memory_limit,
    allowed_failures,
    device,
    progress,
) -> dict[str, dict[str, Any]]:
    """Run the jobs on the cluster; the finished slides' rows by id."""
    import dask
    from distributed import Client, LocalCluster

    from .task import ModelPlugin, run_slide

    cluster = None
    own_client = client is None
    saved_environ = {key: os.environ.get(key) for key in _WORKER_ENV_KEYS}
    if client is None:
        if scheduler:
            client = _connect(scheduler)
        else:
            n, threads = default_workers()
            n = workers or n
            threads = threads_per_worker or max(1, (os.cpu_count() or 1) // n)
            settings = {
                "distributed.scheduler.allowed-failures": allowed_failures,
                "distributed.nanny.pre-spawn-environ": _worker_environ(threads),
            }
            with dask.config.set(settings):
                cluster = LocalCluster(
                    n_workers=n,
                    threads_per_worker=1,  # one slide at a time per worker; torch uses `threads`
                    processes=True,
                    memory_limit=memory_limit,
                    dashboard_address=":0" if _has_bokeh() else None,
                )
            client = Client(cluster)
            threads_per_worker = threads
    dashboard = client.dashboard_link if _has_bokeh() else None
    logger.info("dashboard: %s", dashboard or "(pip install bokeh to get one)")
    if progress is not None:
        progress({"event": "started", "dashboard": dashboard})
    plugin = ModelPlugin(
        model_path, device=device, torch_threads=threads_per_worker, quiet_when_scheduler_closes=cluster is not None
    )
    finished: dict[str, dict[str, Any]] = {}
    client_level = logging.getLogger("distributed.client").level
    try:
        client.register_plugin(plugin, name=plugin.name)
        token = f"{time.time_ns():x}"
        futures = {}
        for job in jobs:
            future = client.submit(
                run_slide,
                {k: v for k, v in job.items() if k != "size"},
                options,
                plugin.name,
                key=f"stpredict-{job['id']}-{token}",
                priority=job["size"] // (1 << 20),  # large slides first: the cohort ends sooner
                retries=0,  # a bad slide's error is returned, not raised; dead workers are the scheduler's
            )
            futures[future] = job
        counts = {
            "done": 0,
            "failed": sum(r["status"] == "failed" for r in rows.values()),
            "reused": sum(r["status"] == "reused" for r in rows.values()),
            "total": len(rows) + len(jobs),
        }
        try:
            _collect(futures, finished, counts, client, progress)
        except OSError as exc:  # CommClosedError, timeouts: the scheduler is gone
            _recover_from_disk(futures.values(), finished)
            lost = [job for job in futures.values() if job["id"] not in finished]
            message = (
                f"the Dask scheduler stopped answering ({' '.join(str(exc).split()) or type(exc).__name__}) "
                "before this slide finished; run the same command again to resume"
            )
            logger.error("scheduler lost: %d slides unfinished; %s", len(lost), message)
            for job in lost:
                finished[job["id"]] = {"id": job["id"], "slide": job["given_as"], "status": "failed", "error": message}
            # Dask's client goes on logging its reconnection attempts with tracebacks while
            # it is closed; the line above says what happened and what to do.
            logging.getLogger("distributed.client").setLevel(logging.CRITICAL)
    finally:
        if own_client:
            with contextlib.suppress(Exception):  # a lost scheduler cannot be told goodbye
                client.close(timeout=10)
        nanny_level = logging.getLogger("distributed.nanny").level
        if cluster is not None:
            # A worker busy with a slide when Ctrl-C closes the cluster is killed after
            # Dask's grace period, with a warning per worker; the command's own line says it.
            logging.getLogger("distributed.nanny").setLevel(logging.ERROR)
            with contextlib.suppress(Exception):
                cluster.close(timeout=30)
            _restore_environ(saved_environ)
        logging.getLogger("distributed.client").setLevel(client_level)
        logging.getLogger("distributed.nanny").setLevel(nanny_level)
    return finished


def _recover_from_disk(jobs, finished) -> None:
    """Rows of slides whose worker completed them before the scheduler went away.

    A worker writes a slide's folder (record inside) before its result reaches the
    client; when the scheduler dies in between, the folder on disk is the proof that the
    slide is done, and calling it failed would make the rerun repeat finished work.
    """
    from .record import complete_record

    for job in jobs:
        if job["id"] in finished:
            continue
        record = complete_record(Path(job["folder"]), job["fingerprint"])
        if record is not None and "row" in record:
            finished[job["id"]] = {**record["row"], "id": job["id"], "slide": job["given_as"], "status": "done"}
            logger.info("%s: done (its folder was complete when the scheduler went away)", job["id"])


def _collect(futures, finished, counts, client, progress) -> None:
    """Each slide's row as its task finishes, with the log line and progress event."""
    from concurrent.futures import CancelledError

    from distributed import as_completed

    for future in as_completed(futures):
        job = futures[future]
        base = {"id": job["id"], "slide": job["given_as"]}
        try:
            row = {**future.result(), **base}
        except Exception as exc:  # noqa: BLE001 - KilledWorker, or an error no slide should raise: recorded, the cohort goes on
            if isinstance(exc, (OSError, CancelledError)) or client.status != "running":
                # The scheduler is gone (its futures are cancelled): not this slide's fault.
                raise OSError(f"{type(exc).__name__}: {exc}") from exc
            row = {**base, "status": "failed", "error": _task_error(exc)}
        finished[job["id"]] = row
        counts["done" if row["status"] == "done" else "failed"] += 1
        logger.log(
            logging.INFO if row["status"] == "done" else logging.WARNING,
            "%s: %s in %ss on %s%s",
            job["id"],
            row["status"],
            row.get("seconds", "?"),
            row.get("worker", "?"),
            f": {row['error']}" if row.get("error") else "",
        )
        if progress is not None:
            # tasks the scheduler has handed to workers, at most one per worker thread
            assigned = sum(len(keys) for keys in client.processing().values())
            running = min(assigned, sum(client.nthreads().values()))
            progress({"event": "slide", **counts, "running": running, "id": job["id"], "status": row["status"]})


# Dask's nanny sets these in its own process before it spawns a worker (and leaves them).
_WORKER_ENV_KEYS = ("MALLOC_TRIM_THRESHOLD_", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def _worker_environ(threads: int) -> dict[str, Any]:
    """Environment of LocalCluster workers.

    Dask's defaults are for many small numpy tasks: one BLAS/OpenMP thread, and
    MALLOC_TRIM_THRESHOLD_=65536 so memory goes back to the OS at once. A slide task
    allocates and frees arrays of hundreds of MB (slide regions, patch batches): with
    that malloc setting the same prediction measured 1.7x slower in a worker than in the
    main process (glibc then maps and unmaps them every time). So: the workers' share
    of the cores as threads, and glibc's own malloc tuning (None leaves the variable out).
    """
    return {
        "MALLOC_TRIM_THRESHOLD_": None,
        "OMP_NUM_THREADS": threads,
        "MKL_NUM_THREADS": threads,
        "OPENBLAS_NUM_THREADS": threads,
    }


def _restore_environ(saved: dict[str, str | None]) -> None:
    """Undo what the nanny wrote into this process's environment (a notebook lives on)."""
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _connect(scheduler: str):
    """A client of a running cluster, from an address or a scheduler file.

    Raises
    ------
    ValueError
        Naming ``--scheduler``: a missing scheduler file, a malformed address, or a
        scheduler that does not answer within Dask's connect timeout
        (``distributed.comm.timeouts.connect``, 30 s by default).
    """
    from distributed import Client

    if Path(scheduler).suffix.lower() == ".json":
        if not Path(scheduler).is_file():
            raise ValueError(f"--scheduler {scheduler}: scheduler file not found")
        kwargs = {"scheduler_file": scheduler}
    else:
        kwargs = {"address": scheduler}
    try:
        return Client(**kwargs)  # waits Dask's distributed.comm.timeouts.connect (30 s)
    except (OSError, TimeoutError, ValueError, TypeError) as exc:
        raise ValueError(f"--scheduler {scheduler}: cannot connect to a Dask scheduler ({exc})") from exc


def _task_error(exc: Exception) -> str:
    from distributed.scheduler import KilledWorker

    if isinstance(exc, KilledWorker):
        return "the slide's task took down its worker repeatedly (crash or out of memory); given up"
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


def _has_bokeh() -> bool:
    import importlib.util

    return importlib.util.find_spec("bokeh") is not None
