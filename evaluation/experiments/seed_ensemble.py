"""Experiment: average the held-out predictions of the fold models trained with seeds 0, 1, 2.

Uses the patient-level fold checkpoints that ``stpredict evaluate --protocol patient
--variant cmrcnet [--seed N]`` left under the config's ``run_dir`` (``<run_dir>/full`` for
the config's own seed, ``<run_dir>/seed<N>/full`` for the others; rerun those commands first
if runs/ is gone). Each model predicts each held-out section exactly as `stpredict
evaluate` scores one model (`held_out_predictions`: its top-k, spatial context and per-slide
adaptation); the mean of the models' predictions is scored the same way, and so is each
model alone (which must give its fold JSON's figures: a check that the right models were
read).

``--views 4`` (or 8) adds test-time augmentation: each patch's pooled backbone features are
averaged over its flips (and, with 8, its 90-degree rotations) before the projection, for
the spots and their neighbouring patches alike; every seed's row is then that seed's model
with the views, so views are compared seed by seed against ``--views 1``.

    python evaluation/experiments/seed_ensemble.py        # the shipped recipe -> pretrain/seed_ensemble.json
    python evaluation/experiments/seed_ensemble.py --config CONFIG --out OUT.json   # another experiment's folds

(``seed_ensemble.json`` beside this script is the record of an earlier recipe's ensemble:
top-k 50, no context, no pretraining; see seeds.md.)

Research use only.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent


def dihedral_views(patches: np.ndarray, n: int) -> list[np.ndarray]:
    """The first ``n`` (1, 2, 4 or 8) dihedral views of ``(N, H, W, 3)`` square patches:
    identity, the flips, then the transposed patches and their flips."""
    flips = [patches, patches[:, :, ::-1], patches[:, ::-1], patches[:, ::-1, ::-1]]
    turned = patches.transpose(0, 2, 1, 3)
    views = flips + [turned, turned[:, :, ::-1], turned[:, ::-1], turned[:, ::-1, ::-1]]
    return [np.ascontiguousarray(v) for v in views[:n]]


def with_views(model, n: int):
    """``model`` whose ``features_many`` averages the features of ``n`` views of each patch
    (the instance attribute shadows the method, so every caller in the scoring gets it)."""
    if n == 1:
        return model
    plain = model.features_many

    def features_many(patches, **kw):
        import torch

        return torch.stack([plain(v, **kw) for v in dihedral_views(patches, n)]).mean(0)

    model.features_many = features_many
    return model


def main() -> None:
    from napari_stpredict.model import load_model
    from napari_stpredict.training.evaluate import fold_data
    from napari_stpredict.training.metrics import nanmean
    from napari_stpredict.training.protocol import METRICS, PROTOCOLS, EvalConfig
    from napari_stpredict.training.scoring import held_out_predictions, score_predictions

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("evaluation/config.yaml"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--views", type=int, choices=(1, 2, 4, 8), default=1, help="test-time views per patch")
    parser.add_argument("--out", type=Path, help="default: pretrain/seed_ensemble[_views<N>].json beside this script")
    args = parser.parse_args()
    cfg = EvalConfig.from_yaml(args.config)
    out_path = args.out or HERE / "pretrain" / f"seed_ensemble{'' if args.views == 1 else f'_views{args.views}'}.json"
    # Where `stpredict evaluate --seed N` put each seed's full-length fold models.
    roots = {s: Path(cfg.overridden(seed=s).run_dir) / "full" for s in args.seeds}
    missing = [str(p) for p in roots.values() if not (p / "patient").is_dir()]
    if missing:
        raise SystemExit(f"no fold models under {', '.join(missing)}: run stpredict evaluate for those seeds first")

    per_section: dict[str, dict[str, dict]] = {}
    for fold in PROTOCOLS["patient"]["folds"]:
        fd = fold_data(cfg, "patient", fold)
        models = {
            s: with_views(load_model(root / "patient" / fold / "cmrcnet" / "model.pt", device="cpu"), args.views)
            for s, root in roots.items()
        }
        for section, spots in fd.tests.items():
            preds = {s: held_out_predictions(m, spots, section, fd.train_config) for s, m in models.items()}
            rows = {f"seed {s}": p for s, p in preds.items()}
            rows["ensemble"] = np.mean(list(preds.values()), axis=0)
            for name, pred in rows.items():
                scores = score_predictions(pred, spots.expression, fd.genes, fd.sets, spots.tumor, fd.panel)
                per_section.setdefault(name, {})[section] = {k: scores[k] for k in METRICS}
            print(fold, section, " ".join(f"{n} {per_section[n][section]['r_heg50']:.3f}" for n in rows), flush=True)
    summary = {
        name: {k: nanmean([v[k] for v in rows.values()]) for k in METRICS} | {"sections": sorted(rows)}
        for name, rows in per_section.items()
    }
    out = {
        "what": f"CMRCNet retrieval ({args.config}), patient-level folds: each seed's model and the mean of "
        f"the predictions of seeds {', '.join(map(str, args.seeds))} (one ensemble)",
        "views": args.views,
        "runs": {str(s): str(p) for s, p in roots.items()},
        "summary": summary,
        "per_section": per_section,
    }
    out_path.write_text(json.dumps(out, indent=1), encoding="utf-8")
    for name, row in summary.items():
        print(f"{name:10s}", " ".join(f"{k} {row[k]:.3f}" for k in METRICS))


if __name__ == "__main__":
    main()
