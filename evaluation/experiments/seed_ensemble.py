"""Experiment: average the predictions of the models trained with seeds 0, 1 and 2.

Uses the patient-level fold checkpoints the seed runs left in runs/ (evaluation/results/full
for seed 0, evaluation/experiments/seed{1,2} for the others; rerun those commands first if
runs/ is gone). Scores the mean of the three models' predictions exactly as
`stpredict evaluate` scores one model, and writes seed_ensemble.json beside this script.

    python evaluation/experiments/seed_ensemble.py
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from napari_stpredict.model import load_model
from napari_stpredict.training.evaluate import fold_data
from napari_stpredict.training.metrics import nanmean
from napari_stpredict.training.protocol import METRICS, PROTOCOLS, EvalConfig
from napari_stpredict.training.scoring import predict_sets, score_predictions

RUNS = {0: Path("runs/eval/full"), 1: Path("runs/experiments/seed1/full"), 2: Path("runs/experiments/seed2/full")}
HERE = Path(__file__).parent


def main() -> None:
    cfg = EvalConfig.from_yaml("evaluation/config.yaml")
    per_section: dict[str, dict[str, dict]] = {}
    for fold in PROTOCOLS["patient"]["folds"]:
        fd = fold_data(cfg, "patient", fold)
        models = [load_model(root / "patient" / fold / "cmrcnet" / "model.pt", device="cpu") for root in RUNS.values()]
        for s, t in fd.tests.items():
            preds = [predict_sets(m, t, fd.train_config.top_k, fd.train.expression) for m in models]
            for method in preds[0]:
                mean_pred = np.mean([p[method] for p in preds], axis=0)
                scores = score_predictions(mean_pred, t.expression, fd.genes, fd.sets, t.tumor, fd.panel)
                per_section.setdefault(method, {})[s] = {k: scores[k] for k in METRICS}
    summary = {
        method: {k: nanmean([v[k] for v in rows.values()]) for k in METRICS} | {"sections": sorted(rows)}
        for method, rows in per_section.items()
    }
    out = {
        "what": "CMRCNet, patient-level folds, mean of the predictions of seeds 0, 1, 2",
        "summary": summary,
        "per_section": per_section,
    }
    (HERE / "seed_ensemble.json").write_text(json.dumps(out, indent=1), encoding="utf-8")
    for method, row in summary.items():
        print(method, " ".join(f"{k} {row[k]:.3f}" for k in METRICS))


if __name__ == "__main__":
    main()
