"""Tables of the transfer experiments (issue 19) from their fold results.

Usage (from the repository root):

    python evaluation/experiments/transfer/compare.py evaluation/experiments/transfer/adapt_standardise ...

For each results folder written by ``stpredict evaluate --protocol patient`` (the
patient-level folds C2-C6 -> B4 and B4 -> C2-C6): every ablation setting of the CMRCNet
fold results averaged over the 6 held-out sections (HEG50, HVG50, markers, all genes,
gene-gene agreement, tumour AUC), then per held-out section the tumour calls at the
calibrated absolute threshold and at the per-slide Otsu threshold against the authors'
cancer clusters (sensitivity / specificity / share called).
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

METRICS = ("r_heg50", "r_hvg50", "r_markers", "r_all", "gene_gene", "tumor_auc")


def table(folder: Path) -> str:
    rows: dict[str, list[dict]] = {}
    trust: list[tuple[str, dict]] = []
    for path in sorted(folder.glob("full/patient/*/cmrcnet.json")):
        record = json.loads(path.read_text(encoding="utf-8"))
        for setting, per_section in record.get("ablation", {}).items():
            rows.setdefault(setting, []).extend(per_section.values())
        trust.extend(record.get("trust", {}).items())
    lines = [f"### {folder}", "", "| setting | sections | " + " | ".join(METRICS) + " |", "|---" * 8 + "|"]
    for setting, scores in rows.items():
        cells = [f"{statistics.mean(s[m] for s in scores if s[m] is not None):.3f}" for m in METRICS]
        lines.append(f"| {setting} | {len(scores)} | " + " | ".join(cells) + " |")
    header = "| section | absolute: sens / spec / called | per-slide Otsu: sens / spec / called |"
    lines += ["", header, "|---|---|---|"]
    for section, t in trust:
        a, o = t.get("absolute") or {}, t["slide_otsu"]
        fmt = "{sensitivity:.2f} / {specificity:.2f} / {called_share:.2f}"
        lines.append(f"| {section} | {fmt.format(**a) if a else '-'} | {fmt.format(**o)} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print(table(Path(arg)))
