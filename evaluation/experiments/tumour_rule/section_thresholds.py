"""How far the best tumour threshold moves between training sections, and whether that spread
marks the spots a held-out section's call gets wrong (issue 19: a 'possible tumour' band).

The default call thresholds the absolute tumour score where it best separates the authors'
cancer clusters over all training spots pooled (Youden's J). Each training section has its
own best cut too (the same leave-section-out predictions `compute_calibration` makes). If
those cuts spread widely, spots scoring between the lowest of them and the pooled threshold
are ones that one training section would have called tumour and the pooled rule does not:
a "possible tumour" band, chosen on the training sections only. This script measures, on
each fold's held-out sections (their ``labelled_scores``, the call the fold JSON records),
how many of the cancer spots the call misses fall in that band and how much other tissue
it would add. It reads fold models from the config's ``run_dir`` and tunes nothing.

Usage (after ``stpredict evaluate`` for those seeds; the fold models live in runs/)::

    python evaluation/experiments/tumour_rule/section_thresholds.py --config CONFIG
        [--protocol patient|loso_C] [--seeds 0 1 2] [--results OUT_DIR] --out OUT.json
    python evaluation/experiments/tumour_rule/section_thresholds.py --bundled --out OUT.json

``--results`` is where the fold JSONs that these models made are (default: the config's
``out_dir``); a fold JSON whose calibrated threshold the model does not reproduce is
refused, so models and results cannot be mixed up.

Research use only.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np


def training_section_cuts(model, cfg_train, panel: list[str]) -> tuple[float, dict[str, float]]:
    """The pooled Youden threshold of the training spots' absolute tumour score and each
    training section's own best cut (sections with both classes labelled)."""
    from napari_stpredict.training import calibration
    from napari_stpredict.training.data import SpotSet
    from napari_stpredict.training.neighbours import context_embeddings
    from napari_stpredict.training.sections import section_spots
    from napari_stpredict.vocabulary import GeneIndex, marker_zscore

    sections = list(model.provenance["train_sections"])
    kw = {"patch_um": model.io.patch_um, "input_px": model.io.input_px, "cache_dir": Path(cfg_train.cache_dir)}
    train = SpotSet.concat([section_spots(s, cfg_train.her2st, model.genes, **kw) for s in sections])
    context = context_embeddings(model, train, sections, cfg_train.her2st, cache_dir=Path(cfg_train.cache_dir))
    predicted = calibration.training_spot_predictions(model, train, neighbours=context)
    mean, sd = calibration.tumour_standardisation(predicted)
    index = GeneIndex(model.genes)
    idx = [index.position(g) for g in panel if g in index]
    score = marker_zscore(predicted[:, idx], mean[idx], sd[idx])
    known = train.tumor >= 0
    pooled = calibration.youden_threshold(score[known], train.tumor[known] == 1)[0]
    cuts = {}
    for s in sections:
        inside = (train.section == s) & known
        label = train.tumor[inside] == 1
        if label.any() and (~label).any():
            cuts[s] = round(calibration.youden_threshold(score[inside], label)[0], 4)
    return round(pooled, 4), cuts


def band_on_held_out(entry: dict, low: float) -> dict[str, float]:
    """The call the fold recorded and what the band ``(low, threshold]`` adds, on one
    held-out section's labelled spots (out-of-domain spots are never called)."""
    scores = entry["labelled_scores"]
    score = np.asarray(scores["absolute"], float)
    cancer = np.asarray(scores["cancer"], bool)
    ood = np.asarray(scores["out_of_domain"], bool)
    threshold = float(entry["absolute"]["threshold"])
    called = (score > threshold) & ~ood
    possible = (score > min(low, threshold)) & ~called & ~ood
    either = called | possible

    def share(a, b):
        return round(float((a & b).sum() / max(b.sum(), 1)), 3)

    return {
        "sensitivity": share(called, cancer),
        "specificity": share(~called, ~cancer),
        "missed_cancer_in_band": share(possible, cancer & ~called),
        "other_tissue_in_band": share(possible, ~cancer),
        "band_share": round(float(possible.mean()), 3),
        "sensitivity_with_band": share(either, cancer),
        "specificity_with_band": share(~either, ~cancer),
    }


def bundled_on_the_sample(her2st: Path) -> dict:
    """The bundled model on its held-out section C2 (the sample's section, full image at
    0.688 µm/px, predicted by the engine): its call and the band from its own training
    sections at the measured spots, against the authors' cancer clusters."""
    from PIL import Image

    from napari_stpredict.inference import run_prediction
    from napari_stpredict.inference.tumor import spots_called, tumor_mask
    from napari_stpredict.io.base import ArraySlide
    from napari_stpredict.model import load_model
    from napari_stpredict.training.sections import section_spots

    model = load_model(device="cpu")
    assert "C2" not in model.provenance["train_sections"], "C2 must be held out"
    panel = list(model.calibration["tumor"]["markers"])
    where = SimpleNamespace(her2st=str(her2st), cache_dir="runs/cache")  # the data and patch cache
    pooled, cuts = training_section_cuts(model, where, panel)
    Image.MAX_IMAGE_PIXELS = None
    image = np.asarray(Image.open(next((her2st / "ST-imgs" / "C" / "C2").glob("*.jpg"))).convert("RGB"))
    prediction = run_prediction(ArraySlide(image, mpp=0.688, levels=4, name="C2"), model)
    mask = tumor_mask(prediction)
    spots = section_spots("C2", str(her2st), model.genes)
    obs = prediction.adata.obs
    # Each measured spot's predicted spot: the one whose grid cell it lies in (-1: none).
    grid = prediction.grid
    numbers = grid.place(obs["grid_row"].to_numpy(int), obs["grid_col"].to_numpy(int), np.arange(len(obs)), fill=-1)
    index = np.nan_to_num(grid.sample(numbers, spots.xy), nan=-1).astype(int)
    known = (spots.tumor >= 0) & (index >= 0)
    called_spots = spots_called(prediction, mask.raster)
    ood = obs["out_of_domain"].to_numpy(bool) if "out_of_domain" in obs else np.zeros(len(obs), bool)
    entry = {
        "absolute": {"threshold": mask.threshold},
        "labelled_scores": {
            "absolute": np.asarray(mask.score)[index[known]].tolist(),
            "cancer": (spots.tumor[known] == 1).tolist(),
            "out_of_domain": ood[index[known]].tolist(),
        },
    }
    low = min(cuts.values(), default=pooled)
    return {
        "model": "bundled",
        "held_out": "C2",
        "threshold": round(float(mask.threshold), 4),
        "section_cuts": cuts,
        "band_low": low,
        "cleaned_mask_share": round(float(called_spots.mean()), 3),
        "at_the_measured_spots": band_on_held_out(entry, low),
    }


def main() -> None:
    from napari_stpredict.model import load_model
    from napari_stpredict.training.protocol import PROTOCOLS, EvalConfig

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundled", action="store_true", help="the bundled model on held-out C2 instead of folds")
    parser.add_argument("--her2st", type=Path, default=Path(__file__).resolve().parents[4] / "shared/data/her2st")
    parser.add_argument("--config", type=Path)
    parser.add_argument("--protocol", choices=("patient", "loso_C"), default="patient")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--results", type=Path, help="the fold JSONs' out_dir (default: the config's)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.bundled:
        row = bundled_on_the_sample(args.her2st)
        print(json.dumps(row))
        args.out.write_text(json.dumps(row, indent=1), encoding="utf-8")
        return
    if args.config is None:
        parser.error("--config is needed (or --bundled)")
    base = EvalConfig.from_yaml(args.config)
    rows = []
    for seed in args.seeds:
        cfg = base.overridden(seed=seed)
        results = args.results or Path(base.out_dir)
        if seed != base.train.seed:  # where `stpredict evaluate --seed N` writes another seed's results
            results = results / "seeds" / f"seed{seed}"
        for fold in PROTOCOLS[args.protocol]["folds"]:
            record_path = results / "full" / args.protocol / fold / "cmrcnet.json"
            record = json.loads(record_path.read_text(encoding="utf-8"))
            model = load_model(Path(cfg.run_dir) / "full" / args.protocol / fold / "cmrcnet" / "model.pt", device="cpu")
            pooled, cuts = training_section_cuts(model, cfg.train, record["marker_panel"]["panel"])
            recorded = {round(float(t["absolute"]["threshold"]), 4) for t in record["trust"].values()}
            if recorded != {pooled}:
                raise SystemExit(
                    f"{record_path}: its calibrated threshold {sorted(recorded)} is not this model's {pooled} "
                    "(models and results of different runs?)"
                )
            low = min(cuts.values(), default=pooled)
            row = {"seed": seed, "fold": fold, "threshold": pooled, "section_cuts": cuts, "band_low": low}
            row["held_out"] = {s: band_on_held_out(t, low) for s, t in record["trust"].items()}
            rows.append(row)
            print(json.dumps(row), flush=True)
    args.out.write_text(
        json.dumps({"config": str(args.config), "protocol": args.protocol, "rows": rows}, indent=1), encoding="utf-8"
    )


if __name__ == "__main__":
    main()
