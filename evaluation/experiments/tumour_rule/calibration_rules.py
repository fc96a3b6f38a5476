"""Which rule on the training spots sets a tumour threshold that carries to another patient.

The product's threshold is Youden's J on the training spots' leave-section-out predicted
tumour scores (`napari_stpredict.training.calibration`). On the patient-level folds it
lands far from the held-out patient's best cut, in opposite directions for the two folds
(`oracle.py`). This script recomputes the training spots' scores of each fold model
(`training_spot_predictions`, exactly as the calibration does) and sets the threshold by
other rules, each scored on the held-out sections' stored scores (the fold JSONs'
``labelled_scores`` of the same models):

- ``youden``: today's rule (checked to equal the fold JSON's calibrated threshold);
- ``equal_error``: where sensitivity equals specificity on the training spots;
- ``class_midpoint``: midway between the cancer and non-cancer training spots' medians;
- ``normal_q90`` / ``normal_q95``: the 90th / 95th percentile of the non-cancer training
  spots' scores (a cut a tumour-free slide like the training tissue passes 5-10 % of).

Usage::

    python evaluation/experiments/tumour_rule/calibration_rules.py --config CONFIG --results RESULTS_DIR \
        [--seed N] [--out OUT.json]

``--config`` is the evaluation recipe whose ``run_dir`` holds the fold models (of ``--seed``),
``--results`` the ``full/`` folder of fold JSONs those models wrote. Every rule here was
chosen before this run; its figures come from the test folds, so any choice made from them
is made on the test patients (say so).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from rules import _calls  # the sibling script's sensitivity / specificity / share called


def _calls_at(score: np.ndarray, cut: float, cancer: np.ndarray, ood: np.ndarray) -> dict[str, float]:
    return {"threshold": round(float(cut), 3), **_calls((score > cut) & ~ood, cancer)}


def equal_error_threshold(score: np.ndarray, cancer: np.ndarray) -> float:
    """The cut where sensitivity and specificity are closest (midway between two scores)."""
    values = np.unique(score)
    cuts = (values[:-1] + values[1:]) / 2
    gap = [abs((score[cancer] > c).mean() - (score[~cancer] <= c).mean()) for c in cuts]
    return float(cuts[int(np.argmin(gap))])


def training_thresholds(score: np.ndarray, cancer: np.ndarray) -> dict[str, float]:
    """Every candidate rule's threshold from the training spots' scores and labels."""
    from napari_stpredict.training.calibration import youden_threshold

    return {
        "youden": youden_threshold(score, cancer)[0],
        "equal_error": equal_error_threshold(score, cancer),
        "class_midpoint": float((np.median(score[cancer]) + np.median(score[~cancer])) / 2),
        "normal_q90": float(np.quantile(score[~cancer], 0.90)),
        "normal_q95": float(np.quantile(score[~cancer], 0.95)),
    }


def main() -> None:
    from napari_stpredict.model import load_model
    from napari_stpredict.training.calibration import training_spot_predictions, tumour_standardisation
    from napari_stpredict.training.evaluate import fold_data
    from napari_stpredict.training.neighbours import context_embeddings
    from napari_stpredict.training.protocol import PROTOCOLS, EvalConfig
    from napari_stpredict.vocabulary import GeneIndex, marker_zscore

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--results", type=Path, required=True, help="the full/ folder of the models' fold JSONs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    cfg = EvalConfig.from_yaml(args.config)
    if args.seed:
        cfg = cfg.overridden(seed=args.seed)
    run_root = Path(cfg.run_dir) / "full" / "patient"
    rows: dict[str, dict] = {}
    training: dict[str, dict] = {}
    for fold, spec in PROTOCOLS["patient"]["folds"].items():
        fold_json = json.loads((args.results / "patient" / fold / "cmrcnet.json").read_text())
        fd = fold_data(cfg, "patient", fold)
        tc = fd.train_config
        model = load_model(run_root / fold / "cmrcnet" / "model.pt", device="cpu")
        context = context_embeddings(model, fd.train, spec["train"], tc.her2st, cache_dir=Path(tc.cache_dir))
        predicted = training_spot_predictions(model, fd.train, neighbours=context)
        mean, sd = tumour_standardisation(predicted)
        idx = GeneIndex(model.genes).positions(fd.panel)
        score = marker_zscore(predicted[:, idx], mean[idx], sd[idx])
        known = fd.train.tumor >= 0
        cuts = training_thresholds(score[known], fd.train.tumor[known] == 1)
        stored = next(iter(fold_json["trust"].values()))["absolute"]["threshold"]
        if abs(cuts["youden"] - stored) > 2e-3:
            raise SystemExit(
                f"{fold}: Youden threshold {cuts['youden']:.4f} is not the stored {stored:.4f}: other models?"
            )
        training[fold] = {k: round(v, 3) for k, v in cuts.items()}
        for section, entry in fold_json["trust"].items():
            s = entry["labelled_scores"]
            held = np.asarray(s["absolute"], float)
            cancer, ood = np.asarray(s["cancer"], bool), np.asarray(s["out_of_domain"], bool)
            rows[section] = {rule: _calls_at(held, cut, cancer, ood) for rule, cut in cuts.items()}
            rows[section]["_cancer_share"] = round(float(cancer.mean()), 3)
        print(fold, "training-spot thresholds:", training[fold], flush=True)
    rules = list(next(iter(training.values())))
    print("| section (cancer share) | " + " | ".join(f"{r}: sens / spec / called" for r in rules) + " |")
    print("|---|" + "---|" * len(rules))
    for section, row in rows.items():
        cells = [f"{row[r]['sensitivity']:.2f} / {row[r]['specificity']:.2f} / {row[r]['called']:.2f}" for r in rules]
        print(f"| {section} ({row['_cancer_share']:.2f}) | " + " | ".join(cells) + " |")
    for r in rules:
        worst = min(min(row[r]["sensitivity"], row[r]["specificity"]) for row in rows.values())
        print(f"{r}: min(sens, spec) over sections {worst:.2f}")
    if args.out:
        out = {"config": str(args.config), "seed": args.seed, "training_thresholds": training, "rows": rows}
        args.out.write_text(json.dumps(out, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
