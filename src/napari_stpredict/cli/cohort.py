"""``stpredict cohort``: many slides on a Dask cluster (`napari_stpredict.cohort`)."""

from __future__ import annotations

import sys
from pathlib import Path

from ..errors import StPredictError
from ..io.regions import parse_roi
from ._common import add_prediction_options

__all__ = ["add", "run"]


def add(sub) -> None:
    """Add the command's parser to ``sub``."""
    p = sub.add_parser(
        "cohort",
        help="predict a cohort of slides on a Dask cluster (local or running), resumable, with a cohort table",
        description="Predict many slides, one Dask task per slide: on a LocalCluster started for the "
        "command, or on a running cluster (--scheduler). Each slide gets the folder 'predict' writes, "
        "whole or not at all, with a completion record; a rerun skips slides complete with the same "
        "settings. Writes cohort.csv, cohort.h5ad, cohort_overview.png, cohort_<gene>.png, cohort.log. "
        "Research use only; not for diagnosis.",
    )
    p.add_argument(
        "slides",
        nargs="+",
        help="slide files, quoted globs ('slides/*.svs'), folders, or CSV manifests (columns: slide, optional mpp, id)",
    )
    p.add_argument("--out", type=Path, required=True, help="output folder")
    add_prediction_options(p)
    p.add_argument(
        "--workers", type=int, default=None, help="LocalCluster worker processes (default: one per GPU, else cores/4)"
    )
    p.add_argument(
        "--threads-per-worker", type=int, default=None, help="torch threads per worker (default: cores / workers)"
    )
    p.add_argument(
        "--memory-limit", default="auto", help="per LocalCluster worker, e.g. 8GB (default: Dask's share of RAM)"
    )
    p.add_argument(
        "--scheduler",
        default=None,
        help="address (tcp://host:8786) or scheduler file (.json) of a running Dask cluster, e.g. one started "
        "with dask-jobqueue on Slurm/PBS or dask-kubernetes; without it a LocalCluster is started",
    )
    p.add_argument(
        "--allowed-failures",
        type=int,
        default=2,
        help="workers a slide may take down (crash, out of memory) before it is marked failed (default 2)",
    )
    p.add_argument(
        "--pseudonymize",
        action="store_true",
        help="ids from each file's content (slide-<12 hex>) instead of file names; the table has no slide column",
    )
    # The completion records do the cache's job for a cohort; a second copy of every
    # prediction in the user's cache folder would only fill the disk.
    p.set_defaults(func=run, no_cache=True)


def run(args) -> int:
    """Run the command; returns its exit status."""
    from tqdm import tqdm

    from ..cohort import run_cohort
    from ..inference.job import PredictOptions

    try:
        options = PredictOptions.from_args(args, roi=parse_roi(args.roi))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    bar: list = []

    def show(event: dict) -> None:
        if event["event"] == "planned":
            print(
                f"{event['total']} slides: {event['reused']} complete with these settings (reused), "
                f"{event['failed']} missing, {event['to_run']} to predict",
                file=sys.stderr,
            )
            bar.append(tqdm(total=event["total"], initial=event["reused"] + event["failed"], unit="slide"))
        elif event["event"] == "started":
            link = event.get("dashboard")
            print(
                f"Dask dashboard: {link}" if link else "Dask dashboard: pip install bokeh to get one", file=sys.stderr
            )
        elif event["event"] == "slide" and bar:
            bar[0].update(1)
            bar[0].set_postfix(done=event["done"], failed=event["failed"], running=event["running"], refresh=True)

    try:
        table = run_cohort(
            args.slides,
            out=args.out,
            model=args.model,
            scheduler=args.scheduler,
            workers=args.workers,
            threads_per_worker=args.threads_per_worker,
            memory_limit=args.memory_limit,
            allowed_failures=args.allowed_failures,
            device=args.device,
            pseudonymize=args.pseudonymize,
            options=options,
            progress=show,
        )
    except (StPredictError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # The cluster was closed on the way out; finished slides keep their folders and records.
        print(
            f"\ninterrupted: the slides finished so far are kept in {args.out}; run the same command "
            "again to resume (they are not recomputed)",
            file=sys.stderr,
        )
        return 130
    finally:
        for b in bar:
            b.close()
    counts = table["status"].value_counts().to_dict()
    print(
        f"{len(table)} slides: {counts.get('done', 0)} predicted, {counts.get('reused', 0)} reused, "
        f"{counts.get('failed', 0)} failed -> {args.out / 'cohort.csv'} (details: {args.out / 'cohort.log'})"
    )
    for row in table[table["status"] == "failed"].itertuples(index=False):
        print(f"error: {row.id}: {row.error}", file=sys.stderr)
    return 1 if counts.get("failed", 0) else 0
