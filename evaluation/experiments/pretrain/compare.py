"""The recipe fine-tuned from pretrained encoders against the same recipe without them, seed by seed.

Issue 19, item 3. The two differ only by ``init_encoder`` (each patient-level fold starts
from the encoder ``stpredict pretrain`` wrote for it, which never saw the fold's held-out
sections: ``evaluation/config.yaml``), so the rows are paired by training seed. The
pretrained recipe is the shipped one since the bundled model was retrained with it: its
results are ``evaluation/results`` (seed 0 in ``full``, seeds 1 and 2 in
``seeds/seed<N>/full``); the recipe without pretraining, as shipped before, is in
``without/`` beside this script, same layout. Writes ``compare.md`` and ``compare.json``
beside this script.

``--protocol loso_C`` pairs the leave-one-section-out folds within patient C instead: the
pretrained recipe's are ``loso_C/`` (same layout), and it writes ``compare_loso_C.md`` /
``.json``. ``--method`` picks the retrieval compared (default ``retrieval``, the shipped
one; ``retrieval_train_bank`` is the paper's setting, retrieval over the training spots).

Usage: python evaluation/experiments/pretrain/compare.py [--protocol patient|loso_C] [--method METHOD]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from napari_stpredict.training.protocol import PROTOCOLS
from napari_stpredict.training.report import seed_result_dirs, seed_summary

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
METRICS = ("r_heg50", "r_hvg50", "r_markers", "r_all", "gene_gene", "tumor_auc")
LABELS = ("HEG50 r", "HVG50 r", "markers r", "all genes r", "gene-gene", "tumour AUC")


#: Where each protocol's pretrained-recipe results lie (the recipe without pretraining is
#: in ``without/`` for both) and the stem of the files written.
RESULTS = {"patient": (REPO / "evaluation" / "results", "compare"), "loso_C": (HERE / "loso_C", "compare_loso_C")}


def _complete(folder: Path, protocol: str) -> bool:
    return all((folder / protocol / fold / "cmrcnet.json").is_file() for fold in PROTOCOLS[protocol]["folds"])


def _seed_dirs(results: Path, protocol: str) -> dict[int, Path]:
    dirs = seed_result_dirs(results)
    return {seed: d for seed, d in dirs.items() if _complete(d, protocol)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--protocol", default="patient", choices=tuple(RESULTS))
    parser.add_argument("--method", default="retrieval", help="retrieval (shipped) or retrieval_train_bank")
    args = parser.parse_args()
    results, stem = RESULTS[args.protocol]
    if args.method != "retrieval":
        stem += f"_{args.method}"
    with_dirs = _seed_dirs(results, args.protocol)
    without_dirs = _seed_dirs(HERE / "without", args.protocol)
    dirs = {seed: d for seed, d in with_dirs.items() if seed in without_dirs}
    if not dirs:
        raise SystemExit(f"no seed has all {args.protocol} folds with and without pretraining")
    row = f"cmrcnet:{args.method}"
    pretrained_summary = seed_summary(dirs, protocol=args.protocol)
    if row not in pretrained_summary:
        raise SystemExit(f"--method {args.method}: not among the results' methods")
    pretrained = pretrained_summary[row]["per_seed"]
    shipped = seed_summary({s: without_dirs[s] for s in dirs}, protocol=args.protocol)[row]["per_seed"]
    lines = [
        "| seed | recipe | " + " | ".join(LABELS) + " |",
        "|---|---|" + "---|" * len(LABELS),
    ]
    deltas: dict[int, dict[str, float]] = {}
    for seed in sorted(dirs):
        ours, ref = pretrained[seed], shipped[seed]
        deltas[seed] = {m: ours[m] - ref[m] for m in METRICS}
        lines.append(f"| {seed} | without pretraining | " + " | ".join(f"{ref[m]:.3f}" for m in METRICS) + " |")
        lines.append(f"| {seed} | pretrained encoder | " + " | ".join(f"{ours[m]:.3f}" for m in METRICS) + " |")
        lines.append(f"| {seed} | difference | " + " | ".join(f"{deltas[seed][m]:+.3f}" for m in METRICS) + " |")
    if len(dirs) > 1:
        import statistics

        def spread(values: list[float]) -> str:
            return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"

        n = len(dirs)
        seeds = sorted(dirs)
        for name, source in (("without pretraining", shipped), ("pretrained encoder", pretrained)):
            cells = " | ".join(spread([source[s][m] for s in seeds]) for m in METRICS)
            lines.append(f"| {n} seeds | {name} | {cells} |")
        cells = " | ".join(spread([deltas[s][m] for s in seeds]) for m in METRICS)
        lines.append(f"| {n} seeds | difference (paired) | {cells} |")
    table = "\n".join(lines) + "\n"
    (HERE / f"{stem}.md").write_text(table, encoding="utf-8")
    record = {"seeds": sorted(dirs), "pretrained": pretrained, "without_pretraining": shipped, "difference": deltas}
    if args.protocol != "patient" or args.method != "retrieval":  # compare.json keeps its historical keys
        record = {"protocol": args.protocol, "method": args.method, **record}
    (HERE / f"{stem}.json").write_text(json.dumps(record, indent=1), encoding="utf-8")
    print(table)


if __name__ == "__main__":
    main()
