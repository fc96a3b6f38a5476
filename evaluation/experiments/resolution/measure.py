"""What the bundled model draws on a held-out section scanned coarser (issue 19, item 5).

Usage (from the repository root; needs ../shared/data):

    python evaluation/experiments/resolution/measure.py [--mpp 0.688 1.0 2.0 3.2]
        [--adaptation none standardise] [--out evaluation/experiments/resolution/results.json]

Section C2 (patient C) is held out of the bundled model's training and bank. Its full
H&E image (0.688 µm/px) is downscaled with Pillow's Lanczos filter to each resolution and
predicted by the engine as an in-memory slide with that mpp (what a user's exported or
Visium "hires" image is). At every resolution: Pearson r of predicted against measured
ERBB2 and the mean r over C2's 50 most expressed model genes (HEG50) at the measured spots
(the grid cell each spot falls in), the share of tissue called tumour at the default
threshold, and the calls' sensitivity and specificity at the spots against the authors'
cancer clusters.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[3]
HER2ST = REPO.parent / "shared" / "data" / "her2st"
NATIVE_MPP = 0.688


def _downscaled(image: np.ndarray, mpp: float) -> np.ndarray:
    from PIL import Image

    if mpp <= NATIVE_MPP * 1.001:
        return image
    factor = NATIVE_MPP / mpp
    size = (max(1, round(image.shape[1] * factor)), max(1, round(image.shape[0] * factor)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))


def measure(mpp: float, adaptation: str, image: np.ndarray, spots, model) -> dict:
    from napari_stpredict.inference import run_prediction
    from napari_stpredict.inference.tumor import too_coarse_for_tumour, tumor_mask
    from napari_stpredict.io.base import ArraySlide

    scaled = _downscaled(image, mpp)
    true_mpp = NATIVE_MPP * image.shape[1] / scaled.shape[1]
    slide = ArraySlide(scaled, mpp=true_mpp, levels=4, name=f"C2 at {mpp:g} µm/px")
    xy = spots.xy * (scaled.shape[1] / image.shape[1])
    t0 = time.perf_counter()
    prediction = run_prediction(slide, model, adaptation=adaptation)
    seconds = time.perf_counter() - t0
    genes = model.genes
    heg = [genes[i] for i in np.argsort(-spots.expression.mean(0))[:50]]
    rs = {}
    for gene in set(heg) | {"ERBB2"}:
        values = prediction.heatmap(gene).sample(xy)
        good = np.isfinite(values)
        measured = spots.expression[:, genes.index(gene)]
        rs[gene] = float(np.corrcoef(values[good], measured[good])[0, 1]) if good.sum() > 2 else float("nan")
    mask = tumor_mask(prediction)
    called = _mask_at(prediction, mask, xy)
    known = spots.tumor >= 0
    label = spots.tumor[known] == 1
    hit = called[known]
    anyway = {}
    if too_coarse_for_tumour(prediction.trust.resolution):
        # What the withheld call would have drawn (`--tumour-out-of-domain`: out-of-domain
        # spots called too), so the limit's reason can be checked for each model.
        forced = tumor_mask(prediction, include_out_of_domain=True)
        forced_hit = _mask_at(prediction, forced, xy)[known]
        anyway = {
            "called_anyway": {
                "tumour_fraction": round(float(forced.fraction), 4),
                "sensitivity": round(float((forced_hit & label).sum() / max(label.sum(), 1)), 4),
                "specificity": round(float((~forced_hit & ~label).sum() / max((~label).sum(), 1)), 4),
            }
        }
    return {
        "mpp": round(true_mpp, 4),
        "adaptation": adaptation,
        "spots_predicted": len(prediction),
        "seconds": round(seconds, 1),
        "erbb2_r": round(rs["ERBB2"], 4),
        "heg50_r": round(float(np.nanmean([rs[g] for g in heg])), 4),
        "tumour_fraction": round(float(mask.fraction), 4),
        "tumour_note": mask.note,
        "sensitivity": round(float((hit & label).sum() / max(label.sum(), 1)), 4),
        "specificity": round(float((~hit & ~label).sum() / max((~label).sum(), 1)), 4),
        "adaptation_summary": dict(prediction.meta.model.adaptation),
        "resolution_verdict": prediction.trust.resolution.to_uns(),
        **anyway,
    }


def _mask_at(prediction, mask, xy) -> np.ndarray:
    """Whether each point's grid cell is called tumour in the cleaned mask."""
    grid = prediction.grid
    rows, cols = grid.cell_of(xy)
    inside = grid.inside(rows, cols)
    out = np.zeros(len(xy), bool)
    out[inside] = np.asarray(mask.raster)[rows[inside], cols[inside]] > 0
    return out


def main() -> None:
    from PIL import Image

    from napari_stpredict.model import load_model
    from napari_stpredict.training.sections import section_spots

    parser = argparse.ArgumentParser()
    parser.add_argument("--mpp", type=float, nargs="+", default=[NATIVE_MPP, 1.0, 2.0, 3.2])
    parser.add_argument("--adaptation", nargs="+", default=["none"])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    model = load_model(args.model, device="cpu")
    assert "C2" not in model.provenance.get("train_sections", []), "C2 must be held out"
    spots = section_spots("C2", str(HER2ST), model.genes)
    Image.MAX_IMAGE_PIXELS = None
    image = np.asarray(Image.open(next((HER2ST / "ST-imgs" / "C" / "C2").glob("*.jpg"))).convert("RGB"))
    rows = []
    print("| µm/px | adaptation | ERBB2 r | HEG50 r | tumour share | sensitivity | specificity | note |")
    print("|---|---|---|---|---|---|---|---|")
    for mpp in args.mpp:
        for adaptation in args.adaptation:
            row = measure(mpp, adaptation, image, spots, model)
            rows.append(row)
            print(
                f"| {row['mpp']:g} | {adaptation} | {row['erbb2_r']:.3f} | {row['heg50_r']:.3f} | "
                f"{row['tumour_fraction']:.2f} | {row['sensitivity']:.2f} | {row['specificity']:.2f} | "
                f"{row['tumour_note'] or ''} |",
                flush=True,
            )
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
