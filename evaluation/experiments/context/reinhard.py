"""Test-time stain matching (Reinhard, in Lab) of held-out sections to the training sections.

Usage: python evaluation/experiments/context/reinhard.py   (seed 0's fold models only)

For each patient-level fold, the held-out section's patches are mapped so that their
tissue pixels' Lab mean and standard deviation equal those of the training patches (600
sampled patches each), then embedded and retrieved as usual (model bank, top-k 50).
Prints HEG50 r, marker r and tumour AUC per held-out section, without and with the
matching. The model itself is unchanged (trained on unmatched patches).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from explore import MODEL_PATHS, REPO  # noqa: E402


def lab_stats(patches: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sd of the Lab values of tissue pixels (L < 85)."""
    from skimage.color import rgb2lab

    lab = rgb2lab(patches.reshape(-1, 1, 3).astype(np.float32) / 255).reshape(-1, 3)
    lab = lab[lab[:, 0] < 85]
    return lab.mean(0), lab.std(0)


def reinhard(patches: np.ndarray, source, reference) -> np.ndarray:
    """Patches with ``source`` Lab statistics mapped onto ``reference``'s."""
    from skimage.color import lab2rgb, rgb2lab

    out = []
    for i in range(0, len(patches), 256):
        lab = rgb2lab(patches[i : i + 256].astype(np.float32) / 255)
        lab = (lab - source[0]) / source[1] * reference[1] + reference[0]
        out.append(np.clip(lab2rgb(lab) * 255, 0, 255).astype(np.uint8))
    return np.concatenate(out)


def main() -> None:
    from napari_stpredict.model import load_model, retrieve
    from napari_stpredict.training.evaluate import EvalConfig, fold_data
    from napari_stpredict.training.scoring import score_predictions

    cfg = EvalConfig.from_yaml(REPO / "evaluation/config.yaml")
    rng = np.random.default_rng(0)
    for fold in ("test_B", "test_C"):
        fd = fold_data(cfg, "patient", fold)
        model = load_model(REPO / MODEL_PATHS[0].format(fold=fold), device="cpu")
        reference = lab_stats(fd.train.patches[rng.choice(len(fd.train), min(600, len(fd.train)), replace=False)])
        for section, spots in fd.tests.items():
            source = lab_stats(spots.patches[rng.choice(len(spots), min(600, len(spots)), replace=False)])
            row = {}
            for name, patches in (("none", spots.patches), ("reinhard", reinhard(spots.patches, source, reference))):
                pred = retrieve(model.embed_many(patches), model.bank, top_k=50)[0].numpy()
                scores = score_predictions(pred, spots.expression, fd.genes, fd.sets, spots.tumor, fd.panel)
                row[name] = tuple(round(scores[m] or 0.0, 3) for m in ("r_heg50", "r_markers", "tumor_auc"))
            print(f"{fold} {section}: (HEG50, markers, AUC) {row}", flush=True)


if __name__ == "__main__":
    main()
