"""Which cancer spots the default tumour call misses, and whether the measured expression
misses them too.

For each labelled held-out section of an evaluation, the predicted tumour score (the
product's absolute score, as the fold's JSON records it) is set beside the same marker
panel scored on the section's **measured** expression (`panel_zscore`: standardised within
the section, as the evaluation's "measured expression (ceiling)" row). It reports:

- the calibrated threshold's sensitivity and specificity, and the predicted score's spread;
- the measured panel's AUC and its best min(sensitivity, specificity) on the section's own
  labels (`oracle.oracle_threshold`): how well the markers themselves separate the authors'
  cancer clusters from the rest on that section;
- the cancer-minus-other gap of the measured panel's mean log1p(CP10k): how far apart the
  two are in expression units (a within-section z-score hides a small gap);
- the median measured marker z of the cancer spots the call misses, of those it calls, and
  of the other tissue; and Pearson r of predicted against measured score within the cancer
  spots.

If the missed cancer spots are those whose measured markers are low, the model follows the
measurement and the miss lies between the marker panel and the cluster labels; if they are
marker-high, the image model fails on them. Nothing here tunes anything: it reads results.

Usage::

    python evaluation/experiments/tumour_rule/under_calls.py OUT_DIR [OUT_DIR ...] \
        [--protocol patient|loso_C] [--her2st ../shared/data/her2st] [--out OUT.json]

OUT_DIR is an ``out_dir`` of ``stpredict evaluate`` (its ``full/`` folder is read), e.g.
``evaluation/experiments/pretrain/loso_C`` or ``evaluation/experiments/pretrain/loso_C/seeds/seed1``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from oracle import calibrated_calls, oracle_threshold

from napari_stpredict.training.data import her2st_section, spot_set
from napari_stpredict.training.metrics import panel_zscore, roc_auc


def measured_panel_score(her2st: str, section: str, panel: list[str]) -> tuple[np.ndarray, np.ndarray, float]:
    """The marker panel's within-section z-score on the measured expression of the labelled
    spots of ``section``, their cancer labels (both in the section's spot order), and the
    cancer-minus-other gap of the panel's mean log1p(CP10k) (medians): the contrast in
    units that a within-section z-score hides."""
    spots = spot_set(her2st_section(her2st, section), panel)
    labelled = spots.tumor >= 0
    cancer = spots.tumor[labelled] == 1
    panel_mean = spots.expression[labelled].mean(1)
    gap = float(np.median(panel_mean[cancer]) - np.median(panel_mean[~cancer]))
    return panel_zscore(spots.expression[labelled], panel, panel), cancer, gap


def section_row(entry: dict, panel: list[str], her2st: str, section: str) -> dict:
    """The comparison of one section's predicted and measured tumour scores (see the module)."""
    scores = entry["labelled_scores"]
    predicted = np.asarray(scores["absolute"], float)
    cancer = np.asarray(scores["cancer"], bool)
    measured, measured_cancer, log_gap = measured_panel_score(her2st, section, panel)
    if len(measured) != len(predicted) or not np.array_equal(measured_cancer, cancer):
        # the fold's JSON records the labelled spots in the section's order: anything else
        # means another data version, and a spot-by-spot comparison would be wrong
        raise SystemExit(f"{section}: the fold's labelled spots do not match the data in {her2st}")
    threshold = float(entry["absolute"]["threshold"])
    called, sens, spec = calibrated_calls(entry)
    _, m_sens, m_spec = oracle_threshold(measured, cancer, np.zeros_like(cancer))
    missed, hit = cancer & ~called, cancer & called

    def median(mask: np.ndarray) -> float | None:
        return round(float(np.median(measured[mask])), 3) if mask.any() else None

    return {
        "cancer_share": round(float(cancer.mean()), 3),
        "calibrated": {"threshold": round(threshold, 3), "sensitivity": round(sens, 3), "specificity": round(spec, 3)},
        "predicted_sd": round(float(predicted.std()), 3),
        "measured_auc": round(roc_auc(measured, cancer), 3),
        "measured_oracle_min": round(min(m_sens, m_spec), 3),
        "measured_log_gap": round(log_gap, 3),
        "measured_z_median": {"missed_cancer": median(missed), "called_cancer": median(hit), "other": median(~cancer)},
        "missed": int(missed.sum()),
        "cancer": int(cancer.sum()),
        "r_predicted_measured_in_cancer": round(float(np.corrcoef(predicted[cancer], measured[cancer])[0, 1]), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+", type=Path)
    parser.add_argument("--protocol", default="patient", help="the folds to read: patient or loso_C")
    parser.add_argument("--her2st", default="../shared/data/her2st")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    rows: dict[str, dict] = {}
    for root in args.results:
        for path in sorted((root / "full" / args.protocol).glob("test_*/cmrcnet.json")):
            fold = json.loads(path.read_text(encoding="utf-8"))
            panel = fold["marker_panel"]["panel"]
            for section, entry in (fold.get("trust") or {}).items():
                if "labelled_scores" in entry and "absolute" in entry:
                    rows[f"{root.name}:{section}"] = section_row(entry, panel, args.her2st, section)
    if not rows:
        raise SystemExit(f"no {args.protocol} fold JSON with labelled_scores under {args.results}")
    print(
        "| out_dir:section | calibrated sens / spec | predicted sd | measured AUC / best min(sens,spec) "
        "| measured log gap | measured z: missed cancer / called cancer / other | r in cancer |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        c, z = r["calibrated"], r["measured_z_median"]
        cells = [f"{v:.2f}" if v is not None else "-" for v in z.values()]
        print(
            f"| {name} | {c['sensitivity']:.2f} / {c['specificity']:.2f} | {r['predicted_sd']:.2f} "
            f"| {r['measured_auc']:.3f} / {r['measured_oracle_min']:.2f} | {r['measured_log_gap']:.2f} "
            f"| {' / '.join(cells)} "
            f"| {r['r_predicted_measured_in_cancer']:.2f} |"
        )
    if args.out:
        args.out.write_text(json.dumps({"protocol": args.protocol, "rows": rows}, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
