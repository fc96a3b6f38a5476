"""Which tumour rule carries across patients (issue 19, item 4), on the same predictions.

Reads the ``labelled_scores`` that ``stpredict evaluate`` keeps in each fold JSON's trust
block (every labelled spot of a held-out section: the absolute score in training-spot
units, the per-slide z-score, the out-of-domain flag and the authors' cancer label) and
scores each candidate rule with its sensitivity, specificity and share called:

- ``absolute``: the fold's calibrated threshold (today's default);
- ``otsu``: Otsu's threshold on the section's own z-scores (always splits a slide in two);
- ``mixture+floor``: a two-component Gaussian mixture fitted to the section's absolute
  scores, the threshold where the upper component becomes the likelier one, kept only when
  the upper component's mean clears the calibrated threshold (else nothing is called) and
  never below ``floor`` standard deviations of the training spots under the calibrated
  threshold (so a slide without tumour keeps its absolute call);
- ``quantile+floor``: the section's own q-quantile of the absolute score, never below the
  floor and never above the calibrated threshold;
- ``contrast`` (fold JSONs that hold it): the marker z-score minus the z-score of the genes
  most depleted in cancer on the training sections, above its own threshold calibrated on
  the training spots like the absolute one (a shift that moves every predicted gene of a
  slide alike cancels out).

``--without-cancer`` scores each section without its cancer spots: the nearest thing to an
in-domain slide without tumour these data hold (same patient, scanner and stain).

Usage::

    python evaluation/experiments/tumour_rule/rules.py RESULTS_DIR [RESULTS_DIR ...] [--out OUT.json]

RESULTS_DIR is an ``out_dir`` of ``stpredict evaluate`` (e.g.
``evaluation/experiments/resolution/coarse_scan_folds``). Choices made on these folds are
made on the test patients (one training patient per patient-level fold leaves no inner
patient split): say so beside any figure quoted from here.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from oracle import sens_spec  # the sibling script's sensitivity and specificity


def _calls(called: np.ndarray, cancer: np.ndarray) -> dict[str, float]:
    """Sensitivity, specificity and share called, rounded for the tables."""
    sensitivity, specificity = sens_spec(called, cancer)
    return {
        "sensitivity": round(sensitivity, 3),
        "specificity": round(specificity, 3),
        "called": round(float(called.mean()), 3),
    }


def _two_gaussians(x: np.ndarray, iterations: int = 200) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """EM for a 1-d mixture of two Gaussians (weights, means, sds), started at the quartiles."""
    w = np.array([0.5, 0.5])
    mu = np.quantile(x, [0.25, 0.75]).astype(float)
    sd = np.full(2, x.std() / 2 + 1e-6)
    for _ in range(iterations):
        dens = w * np.exp(-0.5 * ((x[:, None] - mu) / sd) ** 2) / sd
        resp = dens / np.maximum(dens.sum(1, keepdims=True), 1e-300)
        n = resp.sum(0) + 1e-9
        w, mu = n / len(x), (resp * x[:, None]).sum(0) / n
        sd = np.sqrt((resp * (x[:, None] - mu) ** 2).sum(0) / n) + 1e-3
    return w, mu, sd


def mixture_threshold(score: np.ndarray, floor: float, calibrated: float) -> float | None:
    """Where a 2-component 1-d Gaussian mixture's upper component becomes the likelier;
    None (call nothing beyond the calibrated rule) when that component sits below the
    calibrated threshold."""
    w, mu, sd = _two_gaussians(score)
    upper = int(np.argmax(mu))
    if mu[upper] < calibrated:
        return None
    grid = np.linspace(score.min(), mu[upper], 2001)
    dens = w * np.exp(-0.5 * ((grid[:, None] - mu) / sd) ** 2) / sd
    likelier = grid[dens[:, upper] > dens[:, 1 - upper]]
    t = float(likelier.min()) if likelier.size else calibrated
    return max(t, floor)


def rules_for(
    entry: dict, calibrated: float, floor_sd: float, quantile: float, without_cancer: bool = False
) -> dict[str, dict]:
    s = entry["labelled_scores"]
    absolute = np.asarray(s["absolute"], float)
    slide_z = np.asarray(s["slide_z"], float)
    ood = np.asarray(s["out_of_domain"], bool)
    cancer = np.asarray(s["cancer"], bool)
    contrast = np.asarray(s["contrast"], float) if "contrast" in s and "contrast" in entry else None
    if without_cancer:
        # A tumour-free in-domain stand-in: the section's own non-cancer spots, scored as
        # if they were the whole slide (the per-slide z-score recomputed over them).
        keep = ~cancer
        if contrast is not None:
            contrast = contrast[keep]
        absolute, ood, cancer = absolute[keep], ood[keep], cancer[keep]
        slide_z = (absolute - absolute.mean()) / max(absolute.std(), 1e-6)
    floor = calibrated - floor_sd  # absolute scores are in training-spot standard deviations
    from skimage.filters import threshold_otsu

    out = {"absolute": _calls((absolute > calibrated) & ~ood, cancer)}
    out["otsu"] = _calls(slide_z > threshold_otsu(slide_z), cancer)
    t_mix = mixture_threshold(absolute, floor, calibrated)
    out["mixture+floor"] = _calls((absolute > (calibrated if t_mix is None else t_mix)) & ~ood, cancer)
    out["mixture+floor"]["threshold"] = None if t_mix is None else round(t_mix, 3)
    t_q = float(np.clip(np.quantile(absolute, quantile), floor, calibrated))
    out["quantile+floor"] = _calls((absolute > t_q) & ~ood, cancer)
    out["quantile+floor"]["threshold"] = round(t_q, 3)
    if contrast is not None:
        out["contrast"] = _calls((contrast > float(entry["contrast"]["threshold"])) & ~ood, cancer)
    out["_cancer_share"] = round(float(cancer.mean()), 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+", type=Path)
    parser.add_argument("--floor-sd", type=float, default=0.5, help="floor: this far under the calibrated threshold")
    parser.add_argument("--quantile", type=float, default=0.5, help="quantile of quantile+floor")
    parser.add_argument(
        "--without-cancer",
        action="store_true",
        help="score each section without its cancer spots (a tumour-free slide of the same patient and "
        "scanner): 'called' is then the share a rule calls on tissue with no cancer",
    )
    parser.add_argument("--protocol", default="patient", help="the folds to read: patient or loso_C")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    table: dict[str, dict] = {}
    for root in args.results:
        # full/ or quick/ of this out_dir only: seeds/seed<N> below it are other results
        for path in sorted(root.glob(f"*/{args.protocol}/test_*/cmrcnet.json")):
            fold = json.loads(path.read_text())
            for section, entry in (fold.get("trust") or {}).items():
                if "labelled_scores" not in entry or "absolute" not in entry:
                    continue
                calibrated = float(entry["absolute"]["threshold"])
                table[f"{root.name}:{section}"] = rules_for(
                    entry, calibrated, args.floor_sd, args.quantile, args.without_cancer
                )
    if not table:
        raise SystemExit("no fold JSON with labelled_scores found (rerun stpredict evaluate with this version)")
    rules = list(dict.fromkeys(r for row in table.values() for r in row if not r.startswith("_")))
    print("| section (cancer share) | " + " | ".join(f"{r}: sens / spec / called" for r in rules) + " |")
    print("|---|" + "---|" * len(rules))
    for name, row in table.items():
        cells = [
            f"{row[r]['sensitivity']:.2f} / {row[r]['specificity']:.2f} / {row[r]['called']:.2f}" if r in row else "-"
            for r in rules
        ]
        print(f"| {name} ({row['_cancer_share']:.2f}) | " + " | ".join(cells) + " |")
    for r in rules:
        sens = [row[r]["sensitivity"] for row in table.values() if r in row]
        spec = [row[r]["specificity"] for row in table.values() if r in row]
        print(f"{r}: min sensitivity {min(sens):.2f}, min specificity {min(spec):.2f}")
    if args.out:
        record = {
            "protocol": args.protocol,
            "floor_sd": args.floor_sd,
            "quantile": args.quantile,
            "without_cancer": args.without_cancer,
        }
        args.out.write_text(json.dumps({**record, "rows": table}, indent=1))


if __name__ == "__main__":
    main()
