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

import logging
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd

from ..inference.job import PredictOptions
from .cluster import default_workers, submit_all

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
                submit_all(
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
    from .record import complete_record, fingerprint

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
        record = complete_record(folder, fp)
        if record is not None:
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
