"""Trust verdicts of the bundled model on every kind of image a user may give it.

Usage (from the repository root, with ../shared/data beside it):
    python evaluation/experiments/trust/verdicts.py

Writes evaluation/experiments/trust/verdicts.md and verdicts.json: per image, the stain
check, the out-of-domain verdict (share of spots unlike the training data) and the
tumour fraction at the default setting (absolute units, calibrated threshold,
out-of-domain spots never called) beside the old default (per-slide Otsu threshold on
the slide's own z-scores, no out-of-domain rule).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[3]
DATA = REPO.parent / "shared" / "data"
OUT = Path(__file__).resolve().parent
sys.path.insert(0, str(REPO / "tests"))


def _images():
    import skimage.data
    from test_stain import dab_recolour

    from napari_stpredict._resources import SAMPLE_SLIDE, sample_data_dir
    from napari_stpredict.io.slide import ArraySlide, open_slide

    sk = Path(skimage.data.__file__).parent
    wsi = DATA / "wsi"
    sample = sample_data_dir() / SAMPLE_SLIDE
    with open_slide(sample) as s:
        sample_l0 = s.read_region((0, 0), 0, s.dimensions)  # 7,400 x 6,300 px, fits in memory
    gray = np.repeat(np.asarray(Image.fromarray(sample_l0).convert("L"))[..., None], 3, -1)
    yield "her2st C2 (bundled sample, held out of training)", lambda: open_slide(sample)
    yield (
        "her2st A1, downscaled app image (patient A, 3.2 µm/px)",
        lambda: open_slide(DATA / "her2st" / "app_imgs" / "A1_HE_image_dark.png", mpp=3.2),
    )
    yield "skin, CMU-1-Small-Region.svs (Aperio, 0.499 µm/px)", lambda: open_slide(wsi / "CMU-1-Small-Region.svs")
    yield (
        "TCGA section, tcga-cr-7395 (.svs, no mpp; 0.5 given)",
        lambda: open_slide(wsi / "tcga-cr-7395-01a-01-ts1.svs", mpp=0.5),
    )
    yield (
        "mouse brain H&E crop, Visium test image (1.0 µm/px given)",
        lambda: open_slide(DATA / "visium" / "mouse_brain_subset" / "test_img.jpg", mpp=1.0),
    )
    yield "fluorescence (DAPI), ndpi_test3-DAPI-2-387.ndpi", lambda: open_slide(wsi / "ndpi_test3-DAPI-2-387.ndpi")
    yield (
        "IHC (DAB), scikit-image ihc.png (0.5 µm/px given)",
        lambda: ArraySlide(np.asarray(Image.open(sk / "ihc.png").convert("RGB")), mpp=0.5, name="ihc.png"),
    )
    yield (
        "IHC-like DAB recolouring of the sample",
        lambda: ArraySlide(dab_recolour(sample_l0), mpp=0.688, name="sample_dab.tif"),
    )
    yield "grayscale copy of the sample", lambda: ArraySlide(gray, mpp=0.688, name="sample_gray.tif")
    yield (
        "photograph, scikit-image coffee.png (0.5 µm/px given)",
        lambda: ArraySlide(np.asarray(Image.open(sk / "coffee.png").convert("RGB")), mpp=0.5, name="coffee.png"),
    )
    yield (
        "synthetic generic TIFF, openslide-python_boxes.tiff",
        lambda: open_slide(wsi / "openslide-python_boxes.tiff", mpp=1.0),
    )


def main() -> None:
    from napari_stpredict.errors import StPredictError
    from napari_stpredict.inference import run_prediction
    from napari_stpredict.inference.tumor import too_coarse_for_tumour, tumor_mask
    from napari_stpredict.model import load_model
    from napari_stpredict.stain import check_slide_stain

    model = load_model(device="cpu")
    rows = []
    for label, opener in _images():
        row = {"image": label}
        with opener() as slide:
            stain = check_slide_stain(slide)
            row["stain"] = f"{stain.kind} ({stain.action})"
            if stain.ok:
                try:
                    p = run_prediction(slide, model)
                except StPredictError as exc:
                    row["error"] = str(exc)
                else:
                    d = p.trust.domain.to_uns() or {}
                    row.update(
                        spots=len(p),
                        verdict=d["verdict"],
                        share_out=d["share_out"],
                        tumour_default=tumor_mask(p).fraction,
                        tumour_old=tumor_mask(p, mode="slide", include_out_of_domain=True).fraction,
                        tumour_withheld=too_coarse_for_tumour(p.trust.resolution),
                    )
        rows.append(row)
        print(row, flush=True)
    (OUT / "verdicts.json").write_text(json.dumps(rows, indent=1), encoding="utf-8")
    lines = [
        (
            "| image | stain check | spots | out-of-domain verdict | spots out of domain | tumour, default "
            "(absolute) | tumour, old default (per-slide Otsu) |"
        ),
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "verdict" in r:
            lines.append(
                f"| {r['image']} | {r['stain']} | {r['spots']} | {r['verdict']} | {r['share_out']:.0%} | "
                f"{r['tumour_default']:.0%}{' (withheld: too coarse)' if r.get('tumour_withheld') else ''} | "
                f"{r['tumour_old']:.0%} |"
            )
        else:
            lines.append(f"| {r['image']} | {r['stain']} | - | {r.get('error', 'not predicted (refused)')} | | | |")
    (OUT / "verdicts.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
