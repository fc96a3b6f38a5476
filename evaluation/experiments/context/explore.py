"""Test-time changes on the patient-level folds, 3 training seeds: bank, top-k, spatial
context from the neighbouring grid cells, and the seed ensemble.

Usage (from the repository root, after the seed models exist; see README.md here):

    python evaluation/experiments/context/explore.py [--out evaluation/experiments/context/explore.json]

Each fold's model of each seed (the shipped recipe, trained by ``stpredict evaluate``)
embeds its held-out sections' spots once; every setting below is then scored from those
embeddings with the evaluation's own scoring (``score_predictions``: HEG50, HVG50, markers, all
genes, gene-gene, tumour AUC), averaged over the 6 held-out sections as in the main table:

- ``bank``: ``model`` (the checkpoint's bank: training spots plus other patients'
  count-only spots, subsampled to 6,000) or ``full`` (every count-only spot of the
  patients that are not held out, no cap);
- ``top_k``: neighbours averaged by the retrieval;
- ``context``: what the whole-slide engine would see around each spot. The engine predicts
  a grid of patches at the patch pitch (112 µm), so each spot has up to 8 grid
  neighbours at 112 µm (sides) and 158 µm (corners). Here they are read from the
  section's image around every held-out spot (``patch_um`` offsets), kept where the
  engine would keep them (at least half tissue, by the engine's own tissue detection
  and the same tissue-fraction test), and averaged with Gaussian weights of
  ``sigma_um`` (centre weight 1): ``expr`` averages the predicted expression,
  ``emb`` the (unit) image embeddings before retrieval; ``none`` = the spot alone;
- ``ensemble``: the mean prediction of the 3 seeds' models.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[3]
FOLDS = ("test_B", "test_C")
MODEL_PATHS = {
    0: "runs/eval/full/patient/{fold}/cmrcnet/model.pt",
    1: "runs/experiments/context/seed1/full/patient/{fold}/cmrcnet/model.pt",
    2: "runs/experiments/context/seed2/full/patient/{fold}/cmrcnet/model.pt",
}
TOP_K = (50, 100)
CONTEXTS = (("none", 0.0), ("expr", 56.0), ("expr", 112.0), ("expr", 1e9), ("emb", 112.0), ("emb", 1e9))
METRICS = ("r_heg50", "r_hvg50", "r_markers", "r_all", "gene_gene", "tumor_auc")


def _full_bank(fd, cfg, fold: str):
    """Expression of every count-only spot of the non-held-out patients (training included)."""
    from napari_stpredict.training.protocol import fold_train_config
    from napari_stpredict.training.sections import section_spots

    tc = fold_train_config(cfg, "patient", fold, "cmrcnet", False)
    extra = [section_spots(s, tc.her2st, fd.genes).expression for s in tc.bank_sections]
    return np.concatenate([fd.train.expression, *extra]).astype(np.float32)


def _neighbour_patches(fd, cfg) -> dict:
    """Per held-out section: patches at the 9 grid offsets and which count as tissue."""
    from dataclasses import replace

    from napari_stpredict.io.slide import open_slide
    from napari_stpredict.io.st_data import HER2ST_MPP
    from napari_stpredict.tiling import _patch_tissue_fraction
    from napari_stpredict.tissue import slide_tissue_mask
    from napari_stpredict.training.data import attach_her2st_patches

    tc = fd.train_config
    step = tc.io.patch_um / HER2ST_MPP  # level-0 px between grid cells
    out = {}
    for section, spots in fd.tests.items():
        image = next((Path(tc.her2st) / "ST-imgs" / section[0] / section).glob("*.jpg"))
        with open_slide(image, mpp=HER2ST_MPP) as slide:
            tissue = slide_tissue_mask(slide, require_tissue=False)
        offsets, patches, keep = [], [], []
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                xy = spots.xy + np.array([dx * step, dy * step])
                shifted = replace(spots, xy=xy, patches=None)
                attach_her2st_patches(shifted, tc.her2st, section, tc.io.patch_um, tc.io.input_px, Path(tc.cache_dir))
                fraction = _patch_tissue_fraction(tissue.mask, tissue.l0_per_th, xy[:, 0], xy[:, 1], (step, step))
                offsets.append((dx, dy))
                patches.append(shifted.patches)
                keep.append(np.ones(len(xy), bool) if dx == dy == 0 else fraction >= 0.5)
        out[section] = (offsets, patches, np.array(keep))
    return out


def _weights(offsets, keep: np.ndarray, sigma_um: float, patch_um: float) -> np.ndarray:
    """(9, n) Gaussian weights of the grid neighbours (0 where not tissue), centre 1."""
    d2 = np.array([(dx * dx + dy * dy) * patch_um * patch_um for dx, dy in offsets])
    w = np.exp(-0.5 * d2 / (sigma_um * sigma_um))
    return w[:, None] * keep


def _predictions(model, fd, full_bank_expr: np.ndarray, neighbours: dict) -> dict:
    """Per held-out section: predictions for each (bank, top_k, context, sigma)."""
    import torch

    from napari_stpredict.model import ReferenceBank, retrieve

    patch_um = fd.train_config.io.patch_um
    with torch.inference_mode():
        full_bank = ReferenceBank(
            model.network.encode_expression(torch.from_numpy(full_bank_expr)), torch.from_numpy(full_bank_expr)
        )
        out = {}
        for section, (offsets, patches, keep) in neighbours.items():
            embs = [torch.nn.functional.normalize(model.embed_many(p).float(), dim=1) for p in patches]
            for bank_name, bank in (("model", model.bank), ("full", full_bank)):
                for k in TOP_K:
                    preds = [retrieve(e, bank, top_k=k)[0].cpu().numpy() for e in embs]
                    centre = offsets.index((0, 0))
                    for context, sigma in CONTEXTS:
                        if context == "none":
                            pred = preds[centre]
                        else:
                            w = _weights(offsets, keep, sigma, patch_um)
                            if context == "expr":
                                pred = np.einsum("on,ong->ng", w, np.stack(preds)) / w.sum(0)[:, None]
                            else:
                                wt = torch.from_numpy(w).float()
                                emb = torch.einsum("on,ond->nd", wt, torch.stack(embs)) / wt.sum(0)[:, None]
                                pred = retrieve(emb, bank, top_k=k)[0].cpu().numpy()
                        out[(section, bank_name, k, context, sigma)] = pred
    return out


def main() -> None:
    from napari_stpredict.model import load_model
    from napari_stpredict.training.evaluate import EvalConfig, fold_data
    from napari_stpredict.training.scoring import score_predictions

    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=REPO / "evaluation/experiments/context/explore.json")
    args = parser.parse_args()
    cfg = EvalConfig.from_yaml(REPO / "evaluation/config.yaml")
    results: list[dict] = []
    for fold in FOLDS:
        fd = fold_data(cfg, "patient", fold)
        full = _full_bank(fd, cfg, fold)
        neighbours = _neighbour_patches(fd, cfg)
        per_seed = {}
        for seed, pattern in MODEL_PATHS.items():
            path = REPO / pattern.format(fold=fold)
            if not path.is_file():
                print(f"missing {path}: skipped")
                continue
            per_seed[seed] = _predictions(load_model(path, device="cpu"), fd, full, neighbours)
            print(f"{fold} seed {seed}: done ({len(full)} spots in the full bank)", flush=True)
        if len(per_seed) == len(MODEL_PATHS):
            per_seed["ensemble"] = {key: np.mean([p[key] for p in per_seed.values()], axis=0) for key in per_seed[0]}
        for seed, preds in per_seed.items():
            for (section, bank, k, context, sigma), pred in preds.items():
                spots = fd.tests[section]
                scores = score_predictions(pred, spots.expression, fd.genes, fd.sets, spots.tumor, fd.panel)
                results.append(
                    {
                        "fold": fold,
                        "section": section,
                        "seed": seed,
                        "bank": bank,
                        "top_k": k,
                        "context": context,
                        "sigma_um": sigma,
                        **{m: scores[m] for m in METRICS},
                    }
                )
    args.out.write_text(json.dumps(results, indent=0), encoding="utf-8")
    print(table(results))


def table(results: list[dict]) -> str:
    """Mean over the 6 held-out sections per seed, then mean ± sd over the 3 seeds."""
    keys = sorted({_key(r) for r in results})
    lines = [
        "| bank | top-k | context | σ (µm) | " + " | ".join(METRICS) + " | ensemble HEG50 | ensemble AUC |",
        "|---" * (len(METRICS) + 6) + "|",
    ]
    for key in keys:
        cells = []
        for metric in METRICS:
            per_seed = []
            for seed in (0, 1, 2):
                vals = [r[metric] for r in results if _key(r) == key and r["seed"] == seed and r[metric] is not None]
                if vals:
                    per_seed.append(float(np.mean(vals)))
            if len(per_seed) >= 2:
                cells.append(f"{statistics.mean(per_seed):.3f} ± {statistics.stdev(per_seed):.3f}")
            elif per_seed:
                cells.append(f"{per_seed[0]:.3f}")
            else:
                cells.append("-")
        ens = {}
        for metric in ("r_heg50", "tumor_auc"):
            vals = [r[metric] for r in results if _key(r) == key and r["seed"] == "ensemble" and r[metric] is not None]
            ens[metric] = f"{np.mean(vals):.3f}" if vals else "-"
        sigma = "uniform" if key[3] >= 1e8 else f"{key[3]:g}"
        lines.append(
            f"| {key[0]} | {key[1]} | {key[2]} | {sigma} | "
            + " | ".join(cells)
            + f" | {ens['r_heg50']} | {ens['tumor_auc']} |"
        )
    return "\n".join(lines)


def _key(r: dict) -> tuple:
    return (r["bank"], r["top_k"], r["context"], r["sigma_um"])


if __name__ == "__main__":
    main()
