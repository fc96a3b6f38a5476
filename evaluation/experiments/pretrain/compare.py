"""Fine-tuned from the pretrained encoders against the shipped recipe, seed by seed (issue 19, item 3).

The two recipes differ only by ``init_encoder`` (each patient-level fold starts from the
encoder ``stpredict pretrain`` wrote for it, which never saw the fold's held-out
sections; `pretrained_eval_test_B.yaml` / `pretrained_eval_test_C.yaml`), so the rows are
paired by training seed. Reads whichever seeds exist under ``folds`` (seed 0 in
``folds/full``, seeds 1 and 2 in ``folds/seeds/seed<N>/full``) and the shipped recipe's
per-seed figures in ``evaluation/results/seeds.json``; writes ``compare.md`` and
``compare.json`` beside this script.

Usage: python evaluation/experiments/pretrain/compare.py
"""

from __future__ import annotations

import json
from pathlib import Path

from napari_stpredict.training.report import seed_summary

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
METRICS = ("r_heg50", "r_hvg50", "r_markers", "r_all", "gene_gene", "tumor_auc")
LABELS = ("HEG50 r", "HVG50 r", "markers r", "all genes r", "gene-gene", "tumour AUC")


def _complete(folder: Path) -> bool:
    return all((folder / "patient" / fold / "cmrcnet.json").is_file() for fold in ("test_B", "test_C"))


def main() -> None:
    folds = HERE / "folds"
    dirs = {0: folds / "full"} | {s: folds / "seeds" / f"seed{s}" / "full" for s in (1, 2)}
    dirs = {seed: d for seed, d in dirs.items() if _complete(d)}
    if not dirs:
        raise SystemExit(f"no seed has both patient-level folds under {folds}")
    pretrained = seed_summary(dirs)["cmrcnet:retrieval"]["per_seed"]
    shipped = json.loads((REPO / "evaluation" / "results" / "seeds.json").read_text(encoding="utf-8"))
    shipped = {int(k): v for k, v in shipped["cmrcnet:retrieval"]["per_seed"].items()}
    lines = [
        "| seed | recipe | " + " | ".join(LABELS) + " |",
        "|---|---|" + "---|" * len(LABELS),
    ]
    deltas: dict[int, dict[str, float]] = {}
    for seed in sorted(dirs):
        ours, ref = pretrained[seed], shipped[seed]
        deltas[seed] = {m: ours[m] - ref[m] for m in METRICS}
        lines.append(f"| {seed} | shipped | " + " | ".join(f"{ref[m]:.3f}" for m in METRICS) + " |")
        lines.append(f"| {seed} | pretrained encoder | " + " | ".join(f"{ours[m]:.3f}" for m in METRICS) + " |")
        lines.append(f"| {seed} | difference | " + " | ".join(f"{deltas[seed][m]:+.3f}" for m in METRICS) + " |")
    if len(dirs) > 1:
        import statistics

        def spread(values: list[float]) -> str:
            return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"

        n = len(dirs)
        seeds = sorted(dirs)
        for name, source in (("shipped", shipped), ("pretrained encoder", pretrained)):
            cells = " | ".join(spread([source[s][m] for s in seeds]) for m in METRICS)
            lines.append(f"| {n} seeds | {name} | {cells} |")
        cells = " | ".join(spread([deltas[s][m] for s in seeds]) for m in METRICS)
        lines.append(f"| {n} seeds | difference (paired) | {cells} |")
    table = "\n".join(lines) + "\n"
    (HERE / "compare.md").write_text(table, encoding="utf-8")
    record = {"seeds": sorted(dirs), "pretrained": pretrained, "shipped": shipped, "difference": deltas}
    (HERE / "compare.json").write_text(json.dumps(record, indent=1), encoding="utf-8")
    print(table)


if __name__ == "__main__":
    main()
