"""`run_cohort`: many slides on a Dask cluster, one task per slide, resumable.

The client (this process) checks the options against the model, resolves the slides,
skips those whose output folder holds a completion record with the same fingerprint,
and submits one task per remaining slide. Workers load the model once (`ModelPlugin`).
A slide that cannot be read fails alone (its task returns the error); a worker that dies
has its slide moved to another worker by the scheduler, and a slide that kills
``allowed_failures`` workers is given up (Dask's ``KilledWorker``). The table and the
figures are written at the end, from every slide's row.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd

from ..inference.job import PredictOptions

__all__ = ["run_cohort", "default_workers"]

logger = logging.getLogger("napari_stpredict.cohort")

# Columns in the order a reader wants them; gene columns follow.
BASE_COLUMNS = [
    "id",
    "slide",
    "status",
    "error",
    "tissue_mm2",
    "spots",
    "tumour_fraction",
    "mean_confidence",
    "share_out_of_domain",
    "domain",
    "stain",
]
TAIL_COLUMNS = ["seconds", "worker"]


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


def run_cohort(
    slides: Iterable[str | Path],
    *,
    out: str | Path,
    model: str | Path | None = None,
    client=None,
    scheduler: str | None = None,
    workers: int | None = None,
    threads_per_worker: int | None = None,
    memory_limit: str | float | None = "auto",
    allowed_failures: int = 2,
    device: str = "auto",
    pseudonymize: bool = False,
    options: PredictOptions | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
    **option_values,
) -> pd.DataFrame:
    """Predict a cohort of slides on a Dask cluster; returns the cohort table.

    Parameters
    ----------
    slides : iterable of str or Path
        Slide files, globs, folders or CSV manifests (see `resolve_slides`).
    out : str or Path
        Output folder: one sub-folder per slide (as ``stpredict predict`` writes it, plus
        a completion record and a tile), ``cohort.csv``, ``cohort.h5ad``,
        ``cohort_overview.png``, ``cohort_<gene>.png`` and ``cohort.log``.
    model : str or Path, optional
        Checkpoint (default: the bundled model); every worker must be able to read it.
    client : distributed.Client, optional
        An existing client (e.g. in a notebook); it is left open.
    scheduler : str, optional
        Address (``tcp://host:8786``) or scheduler-file path of a running cluster.
        Without ``client`` and ``scheduler`` a `LocalCluster` is started and closed.
    workers, threads_per_worker : int, optional
        `LocalCluster` size (default: `default_workers`). Each worker runs one slide at a
        time; ``threads_per_worker`` is the torch threads it uses.
    memory_limit : str or float
        Per `LocalCluster` worker (Dask's meaning: "auto", "4GB", ...). A worker beyond
        it is restarted by Dask and its slide tried elsewhere.
    allowed_failures : int
        Workers a slide may take down before it is marked failed (`LocalCluster` only;
        a running cluster keeps its scheduler's setting).
    device : str
        ``auto``, ``cpu``, ``cuda``, ``cuda:1``, ``mps``.
    pseudonymize : bool
        Ids from file content; the table has no ``slide`` column.
    options : PredictOptions, optional
        The prediction options; or give them as keywords (``genes=["ERBB2"]``, ...).
    progress : callable, optional
        Called with ``{"event": "planned", "total", "to_run", "reused", "failed"}`` once
        the slides are resolved, ``{"event": "started", "dashboard"}`` once the cluster
        is up, and ``{"event": "slide", "done", "failed", "reused", "running", "total",
        "id", "status"}`` after each slide.

    Returns
    -------
    pandas.DataFrame
        One row per slide (see ``BASE_COLUMNS``; per gene ``<gene>_mean`` and
        ``<gene>_tumour_mean``), ``status`` one of ``done``, ``reused``, ``failed``.

    Raises
    ------
    ValueError, StPredictError
        Bad options, slides or model, before any slide is read.
    """
    from ..io.fingerprint import file_sha1
    from ..model import default_model_path, open_model
    from .manifest import resolve_slides

    if options is None:
        options = PredictOptions(**option_values)
    elif option_values:
        options = replace(options, **option_values)
    out = Path(out)
    model_path = Path(model) if model is not None else default_model_path()
    if device not in ("auto", "cpu"):  # "cuda:3" on a machine without it: said before any work
        from ..model.stmodel import select_device

        try:
            select_device(device)
        except (RuntimeError, ValueError) as exc:
            raise ValueError(f"--device {device!r}: {exc}") from exc
    for name, value in (("--workers", workers), ("--threads-per-worker", threads_per_worker)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    if allowed_failures < 1:
        raise ValueError(f"--allowed-failures must be at least 1, got {allowed_failures}")
    _check_memory_limit(memory_limit)
    if client is None and scheduler and Path(scheduler).suffix.lower() == ".json" and not Path(scheduler).is_file():
        raise ValueError(f"--scheduler {scheduler}: scheduler file not found")
    # Its card (or, without one, the checkpoint read now) checks the options before any
    # worker starts; a rerun with nothing to recompute never imports torch.
    checker = open_model(model_path, device="cpu")
    problems = options.problems(checker)
    if problems:
        raise ValueError("; ".join(problems))
    genes = options.chosen_genes(checker)
    del checker
    cohort = resolve_slides(slides, pseudonymize=pseudonymize)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out {out}: exists and is not a folder")
    _check_slide_folders(cohort, out)
    out.mkdir(parents=True, exist_ok=True)
    log_handler = _log_to(out / "cohort.log")
    try:
        model_sha1 = file_sha1(model_path)
        logger.info("cohort of %d slides, model %s, options %s", len(cohort), model_path.name, options)
        rows, jobs = _plan(cohort, out, options, model_sha1, genes[0], pseudonymize)
        if progress is not None:
            progress(
                {
                    "event": "planned",
                    "total": len(cohort),
                    "to_run": len(jobs),
                    "reused": sum(r["status"] == "reused" for r in rows.values()),
                    "failed": sum(r["status"] == "failed" for r in rows.values()),
                }
            )
        if jobs:
            rows.update(
                _submit_all(
                    jobs,
                    options,
                    model_path,
                    rows,
                    client=client,
                    scheduler=scheduler,
                    workers=workers,
                    threads_per_worker=threads_per_worker,
                    memory_limit=memory_limit,
                    allowed_failures=allowed_failures,
                    device=device,
                    progress=progress,
                )
            )
        table = _table([rows[s.id] for s in cohort], genes, pseudonymize)
        from .figures import write_cohort_outputs

        write_cohort_outputs(table, out, genes)
        counts = table["status"].value_counts().to_dict()
        logger.info("finished: %s", ", ".join(f"{v} {k}" for k, v in counts.items()))
        return table
    finally:
        logger.removeHandler(log_handler)
        log_handler.close()


#: What a worker needs to load the model and predict a slide (torch, the network, a batch
#: of patches, the slide reader's cache), measured with the bundled model: about 1.1 GB.
MIN_WORKER_MEMORY = 1_500_000_000


def _check_memory_limit(memory_limit) -> None:
    """Refuse, before any work, a ``--memory-limit`` Dask cannot read or too small for a
    worker to load the model (its workers would die one after another)."""
    if memory_limit in (None, "auto", 0, "0"):
        return
    from dask.utils import format_bytes, parse_bytes

    try:
        limit = parse_bytes(memory_limit) if isinstance(memory_limit, str) else int(memory_limit)
    except (ValueError, TypeError) as exc:
        raise ValueError(
            f"--memory-limit {memory_limit!r}: not a memory size (e.g. 8GB or 8GiB; auto shares the machine's "
            "memory; 0 sets no limit)"
        ) from exc
    if 0 < limit < MIN_WORKER_MEMORY:
        raise ValueError(
            f"--memory-limit {memory_limit}: a worker needs at least {format_bytes(MIN_WORKER_MEMORY)} to load "
            f"the model and predict a slide (got {format_bytes(limit)})"
        )


def _check_slide_folders(cohort, out: Path) -> None:
    """Refuse, before any work, slide folders that hold an input slide or were not written
    by napari-stpredict (`check_output_folder`), naming each."""
    from ..io.output_folder import ForeignFolderError, check_output_folder

    inputs = [slide.path for slide in cohort]
    problems = []
    for slide in cohort:
        try:
            check_output_folder(out / slide.id, inputs)
        except ForeignFolderError as exc:
            problems.append(f"slide {slide.id}: {exc}")
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise ValueError("; ".join(problems[:5]) + more)


def _plan(cohort, out: Path, options, model_sha1: str, gene: str, pseudonymize: bool):
    """Rows of slides already complete with the same fingerprint, jobs for the others."""
    from ..inference.cache import slide_fingerprint
    from ..io.output_folder import is_complete_output
    from .record import fingerprint, read_record

    settings = options.result_settings()
    rows: dict[str, dict[str, Any]] = {}
    jobs = []
    for slide in cohort:
        base = {"id": slide.id, "slide": slide.given_as}
        shown = slide.id if pseudonymize else slide.given_as  # what errors and the log may name
        if not slide.path.is_file():
            rows[slide.id] = {**base, "status": "failed", "error": f"{shown}: file not found"}
            logger.warning("%s: %s: file not found", slide.id, shown)
            continue
        try:
            fp = fingerprint(slide_fingerprint(slide.path), model_sha1, settings, slide.mpp)
        except OSError as exc:
            rows[slide.id] = {**base, "status": "failed", "error": f"{shown}: cannot read ({exc.strerror})"}
            continue
        folder = out / slide.id
        record = read_record(folder) if is_complete_output(folder) else None
        if record is not None and record.get("fingerprint") == fp:
            rows[slide.id] = {**record["row"], **base, "status": "reused"}
            logger.info("%s: complete with the same settings, reused", slide.id)
            continue
        jobs.append(
            {
                "id": slide.id,
                "path": str(slide.path),
                "given_as": slide.given_as,
                "mpp": slide.mpp,
                "folder": str(folder),
                "fingerprint": fp,
                "gene": gene,
                "shown_as": slide.id if pseudonymize else None,
                "size": slide.path.stat().st_size,
            }
        )
    return rows, jobs


def _submit_all(
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
    from ..io.output_folder import is_complete_output
    from .record import read_record

    for job in jobs:
        if job["id"] in finished:
            continue
        folder = Path(job["folder"])
        record = read_record(folder) if is_complete_output(folder) else None
        if record is not None and record.get("fingerprint") == job["fingerprint"] and "row" in record:
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


def _table(rows: list[dict[str, Any]], genes: list[str], pseudonymize: bool) -> pd.DataFrame:
    gene_columns = [f"{g}{suffix}" for g in genes for suffix in ("_mean", "_tumour_mean")]
    columns = BASE_COLUMNS + gene_columns + TAIL_COLUMNS
    table = pd.DataFrame(rows).reindex(columns=columns)
    table["error"] = table["error"].fillna("")
    table["spots"] = table["spots"].astype("Int64")  # a failed slide has none, not NaN spots
    if pseudonymize:
        table = table.drop(columns=["slide"])
    return table


def _log_to(path: Path) -> logging.Handler:
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    return handler
