"""Table of the trust figures on held-out her2st sections (patient-level folds).

Usage, after ``stpredict evaluate`` (the main evaluation's fold JSON files hold these
figures under ``trust``):

    python evaluation/experiments/trust/summarise.py [--results evaluation/results/full]

which writes evaluation/experiments/trust/trust.md from the per-fold JSON files.
(``--results evaluation/experiments/trust/full`` reads the first, pre-context run made with
``evaluation/experiments/trust/config.yaml``.)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]


def table(results: Path) -> str:
    """The text of trust.md made from the patient-level fold JSON files under ``results``."""
    rows = []
    for path in sorted((results / "patient").glob("*/cmrcnet.json")):
        record = json.loads(path.read_text(encoding="utf-8"))
        for section, t in record["trust"].items():
            rows.append((record["fold"], record["train_sections"], section, t))
    head = (
        "| fold (trained on) | held-out section | labelled spots (cancer) | spots out of domain | AUC, absolute | "
        "absolute threshold: sens / spec / called | AUC, per slide | per-slide Otsu: sens / spec / called |"
    )
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    keys = ("ood_share", "abs_auc", "abs_sens", "abs_spec", "otsu_auc", "otsu_sens", "otsu_spec")
    means = {k: [] for k in keys}
    for fold, train, section, t in rows:
        a, o = t["absolute"], t["slide_otsu"]
        lines.append(
            f"| {fold} ({', '.join(train)}) | {section} | {t['labelled']} ({t['cancer_share']:.0%}) | "
            f"{t['ood_share']:.1%} | {a['auc']:.3f} | {a['sensitivity']:.2f} / {a['specificity']:.2f} / "
            f"{a['called_share']:.0%} | {o['auc']:.3f} | {o['sensitivity']:.2f} / {o['specificity']:.2f} / "
            f"{o['called_share']:.0%} |"
        )
        for k, v in zip(
            keys,
            (
                t["ood_share"],
                a["auc"],
                a["sensitivity"],
                a["specificity"],
                o["auc"],
                o["sensitivity"],
                o["specificity"],
            ),
        ):
            means[k].append(v)
    m = {k: float(np.mean(v)) for k, v in means.items()}
    lines.append(
        f"| **mean of {len(rows)} sections** | | | {m['ood_share']:.1%} | {m['abs_auc']:.3f} | "
        f"{m['abs_sens']:.2f} / {m['abs_spec']:.2f} | {m['otsu_auc']:.3f} | "
        f"{m['otsu_sens']:.2f} / {m['otsu_spec']:.2f} |"
    )
    text = (
        "Tumour calls and out-of-domain share on held-out sections (patient-level folds; each fold's model "
        "calibrated on its own training sections only). Labels: the her2st authors' expression clusters "
        "named cancer vs the other named clusters. 'absolute': marker z-scores in the training spots' units, "
        "the threshold chosen on the training spots (Youden's J), out-of-domain spots not called. 'per slide': "
        "the section's own z-scores and Otsu's threshold (the old default).\n\n" + "\n".join(lines) + "\n"
    )
    return text


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--results", type=Path, default=REPO / "evaluation" / "results" / "full")
    args = parser.parse_args()
    text = table(args.results)
    (HERE / "trust.md").write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
