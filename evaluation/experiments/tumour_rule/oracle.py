"""How well any threshold could call tumour on these predictions: the upper bound of every rule.

For each held-out section of the patient-level folds, the threshold on the absolute tumour
score that maximises min(sensitivity, specificity) is found **on that section's own cancer
labels** (an oracle no product can have), beside what the calibrated threshold gives. If
the oracle stays under the goal (both >= 0.70), no threshold rule (absolute, per slide,
mixture, quantile) can meet it on these predictions: the score's ranking has to improve.
Out-of-domain spots are never called, as in the product.

Usage::

    python evaluation/experiments/tumour_rule/oracle.py RESULTS_DIR [RESULTS_DIR ...] [--out OUT.json]

RESULTS_DIR is a ``full/`` folder of ``stpredict evaluate`` (e.g. ``evaluation/results/full``
or ``evaluation/results/seeds/seed1/full``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def sens_spec(called: np.ndarray, cancer: np.ndarray) -> tuple[float, float]:
    """Sensitivity and specificity of the boolean calls ``called`` against ``cancer``."""
    return float((called & cancer).sum() / max(cancer.sum(), 1)), float(
        (~called & ~cancer).sum() / max((~cancer).sum(), 1)
    )


def oracle_threshold(score: np.ndarray, cancer: np.ndarray, ood: np.ndarray) -> tuple[float, float, float]:
    """The cut maximising min(sensitivity, specificity): ``(threshold, sensitivity, specificity)``."""
    values = np.unique(score)
    cuts = np.concatenate([[values[0] - 1.0], (values[:-1] + values[1:]) / 2])
    best = (-1.0, float(cuts[0]), 0.0, 0.0)
    for cut in cuts:
        sens, spec = sens_spec((score > cut) & ~ood, cancer)
        if min(sens, spec) > best[0]:
            best = (min(sens, spec), float(cut), sens, spec)
    return best[1], best[2], best[3]


def calibrated_calls(entry: dict) -> tuple[np.ndarray, float, float]:
    """The product's call at the fold's calibrated threshold on one section's labelled
    spots (a fold JSON's ``trust[section]``): ``(called, sensitivity, specificity)``;
    out-of-domain spots are never called."""
    s = entry["labelled_scores"]
    score, cancer = np.asarray(s["absolute"], float), np.asarray(s["cancer"], bool)
    called = (score > float(entry["absolute"]["threshold"])) & ~np.asarray(s["out_of_domain"], bool)
    return (called, *sens_spec(called, cancer))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    rows = {}
    for root in args.results:
        for path in sorted(root.glob("patient/test_*/cmrcnet.json")):
            for section, entry in json.loads(path.read_text()).get("trust", {}).items():
                s = entry.get("labelled_scores")
                if not s or "absolute" not in entry:
                    continue
                score, cancer = np.asarray(s["absolute"], float), np.asarray(s["cancer"], bool)
                ood = np.asarray(s["out_of_domain"], bool)
                t, sens, spec = oracle_threshold(score, cancer, ood)
                calibrated = float(entry["absolute"]["threshold"])
                _, cal_sens, cal_spec = calibrated_calls(entry)
                rows[f"{root}:{section}"] = {
                    "oracle": {"threshold": round(t, 3), "sensitivity": round(sens, 3), "specificity": round(spec, 3)},
                    "calibrated": {
                        "threshold": round(calibrated, 3),
                        "sensitivity": round(cal_sens, 3),
                        "specificity": round(cal_spec, 3),
                    },
                    "auc": entry["absolute"]["auc"],
                }
    if not rows:
        raise SystemExit("no fold JSON with labelled_scores found")
    print("| results:section | AUC | oracle threshold: sens / spec | calibrated threshold: sens / spec |")
    print("|---|---|---|---|")
    for name, r in rows.items():
        o, c = r["oracle"], r["calibrated"]
        print(
            f"| {name} | {r['auc']:.3f} | {o['threshold']:.2f}: {o['sensitivity']:.2f} / {o['specificity']:.2f} "
            f"| {c['threshold']:.2f}: {c['sensitivity']:.2f} / {c['specificity']:.2f} |"
        )
    bound = [min(r["oracle"]["sensitivity"], r["oracle"]["specificity"]) for r in rows.values()]
    print(
        f"oracle min(sens, spec): {min(bound):.2f}-{max(bound):.2f}, median {np.median(bound):.2f}; "
        f"under 0.70 in {sum(b < 0.70 for b in bound)} of {len(bound)} sections"
    )
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
