"""The shipped recipe over 3 training seeds, with the ablation of its retrieval settings.

Reads the patient-level fold results of seed 0 (``evaluation/results/full``, from
``stpredict evaluate``) and of seeds 1 and 2 (``evaluation/results/seeds/seed<N>/full``,
from ``stpredict evaluate --protocol patient --variant cmrcnet --seed N``), and writes
``evaluation/results/seeds.md`` and ``seeds.json``: per row the mean over the 6 held-out
sections for each seed, then mean ± sd over the seeds.

Usage: python scripts/seed_table.py [--results evaluation/results] [--recipe NAME]
                                    [--without CHANGE=RESULTS ...] [--protocol loso_C]

``--without pretraining=evaluation/experiments/pretrain/without`` adds the row of the recipe
trained without that change (its own evaluation folder, same layout, same seeds): the
ablation row of a change the shipped recipe kept.

``--recipe`` names another experiment's recipe in the first row (e.g. ``--results
evaluation/experiments/resolution/coarse_scan_folds --recipe "coarse-scan recipe"``).

``--protocol loso_C`` reads the leave-one-section-out folds within patient C instead (mean
over C2-C6 per seed) and writes ``seeds_loso_C.md`` / ``.json`` beside the patient table
(e.g. ``--results evaluation/experiments/pretrain/loso_C --protocol loso_C``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from napari_stpredict.training.report import WITHOUT_PREFIX, seed_result_dirs, seed_summary, seed_table


def _seed_dirs(results: Path, protocol: str, all_seeds: bool = True) -> dict[int, Path]:
    """Seed -> results folder; every seed must be there unless ``all_seeds`` is False (an
    ablation row run on fewer seeds, whose count the table's seeds column then shows)."""
    dirs = seed_result_dirs(results)
    missing = [str(d) for d in dirs.values() if not (d / protocol).is_dir()]
    if missing and (all_seeds or len(missing) == len(dirs)):
        raise SystemExit(f"no {protocol} results in: {', '.join(missing)}")
    return {s: d for s, d in dirs.items() if (d / protocol).is_dir()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--results", type=Path, default=Path("evaluation/results"))
    parser.add_argument("--recipe", default="the shipped recipe", help="the recipe's name in the first row")
    parser.add_argument(
        "--without",
        action="append",
        default=[],
        metavar="CHANGE=RESULTS",
        help="a row for the recipe without CHANGE, from that evaluation's results folder",
    )
    parser.add_argument(
        "--protocol",
        default="patient",
        choices=("patient", "loso_C"),
        help="which folds to average (default: patient-level)",
    )
    args = parser.parse_args()
    summary = seed_summary(_seed_dirs(args.results, args.protocol), protocol=args.protocol)
    for spec in args.without:
        change, sep, folder = spec.partition("=")
        if not sep or not change or not folder:
            raise SystemExit(f"--without {spec!r}: expected CHANGE=RESULTS_FOLDER")
        without_dirs = _seed_dirs(Path(folder), args.protocol, all_seeds=False)
        without = seed_summary(without_dirs, protocol=args.protocol)
        summary[WITHOUT_PREFIX + change] = without["cmrcnet:retrieval"]
    table = seed_table(summary, recipe=args.recipe)
    # The patient table keeps its historical name (the issue and README cite seeds.json).
    stem = "seeds" if args.protocol == "patient" else f"seeds_{args.protocol}"
    (args.results / f"{stem}.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    (args.results / f"{stem}.md").write_text(table, encoding="utf-8")
    print(table)


if __name__ == "__main__":
    main()
