"""Experiment: average the held-out predictions of the fold models trained with seeds 0, 1, 2.

Uses the fold checkpoints that ``stpredict evaluate --protocol patient|loso_C --variant
cmrcnet [--seed N]`` left under the config's ``run_dir`` (``<run_dir>/full`` for the
config's own seed, ``<run_dir>/seed<N>/full`` for the others; rerun those commands first if
runs/ is gone). Each model predicts each held-out section exactly as `stpredict evaluate`
scores one model (`fold_predictions`: its top-k, spatial context and per-slide
adaptation); the mean of the models' predictions is scored the same way, and so is each
model alone (which must give its fold JSON's figures: a check that the right models were
read).

``--views 4`` (or 8) adds test-time augmentation: each patch's pooled backbone features are
averaged over its flips (and, with 8, its 90-degree rotations) before the projection, for
the spots and their neighbouring patches alike; every seed's row is then that seed's model
with the views, so views are compared seed by seed against ``--views 1``.

    python evaluation/experiments/seed_ensemble.py        # the shipped recipe -> pretrain/seed_ensemble.json
    python evaluation/experiments/seed_ensemble.py --config CONFIG --out OUT.json   # another experiment's folds
    python evaluation/experiments/seed_ensemble.py --config evaluation/experiments/pretrain/loso_C/config.yaml \
        --protocol loso_C --out evaluation/experiments/pretrain/loso_C/seed_ensemble.json   # within patient C

Both retrieval methods the evaluation scores are written (``methods``): over the model's
bank (``retrieval``, as shipped; also the top-level ``summary``) and over the fold's
training spots only (``retrieval_train_bank``, the leave-one-section-out headline).

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


def fold_predictions(model, spots, section: str, fd) -> dict[str, np.ndarray]:
    """A fold model's predictions of a held-out section by every retrieval method
    `stpredict evaluate` scores (``retrieval``: over the model's bank, as shipped;
    ``retrieval_train_bank``: over the fold's training spots), made as the evaluation
    makes them (its top-k, spatial context and per-slide adaptation)."""
    from napari_stpredict.training.scoring import held_out_embeddings, predict_sets
    from napari_stpredict.training.train import encoder_input

    tc = fd.train_config
    embs, neighbours, _ = held_out_embeddings(model, spots, section, tc)
    sets = predict_sets(model, embs, fd.train.expression, neighbours, encoder_input(fd.train, tc.expression_targets))
    return {m: sets[m] for m in METHODS}


FOLDS_IN_WORDS = {"patient": "patient-level folds", "loso_C": "leave-one-section-out folds within patient C"}
#: The retrieval methods scored; ``retrieval`` (the shipped one) is also the file's top-level summary.
METHODS = ("retrieval", "retrieval_train_bank")


def main() -> None:
    from napari_stpredict.model import load_model
    from napari_stpredict.training.evaluate import fold_data
    from napari_stpredict.training.metrics import nanmean
    from napari_stpredict.training.protocol import METRICS, PROTOCOLS, EvalConfig
    from napari_stpredict.training.scoring import score_predictions

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("evaluation/config.yaml"))
    parser.add_argument("--protocol", choices=("patient", "loso_C"), default="patient")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--views", type=int, choices=(1, 2, 4, 8), default=1, help="test-time views per patch")
    parser.add_argument("--out", type=Path, help="default: pretrain/seed_ensemble[_views<N>].json beside this script")
    args = parser.parse_args()
    cfg = EvalConfig.from_yaml(args.config)
    if args.out is None and args.protocol != "patient":
        raise SystemExit("--out is needed for --protocol loso_C")
    out_path = args.out or HERE / "pretrain" / f"seed_ensemble{'' if args.views == 1 else f'_views{args.views}'}.json"
    # Where `stpredict evaluate --seed N` put each seed's full-length fold models.
    roots = {s: Path(cfg.overridden(seed=s).run_dir) / "full" for s in args.seeds}
    missing = [str(p) for p in roots.values() if not (p / args.protocol).is_dir()]
    if missing:
        raise SystemExit(f"no fold models under {', '.join(missing)}: run stpredict evaluate for those seeds first")

    per_method: dict[str, dict[str, dict[str, dict]]] = {m: {} for m in METHODS}
    for fold in PROTOCOLS[args.protocol]["folds"]:
        fd = fold_data(cfg, args.protocol, fold)
        models = {
            s: with_views(load_model(root / args.protocol / fold / "cmrcnet" / "model.pt", device="cpu"), args.views)
            for s, root in roots.items()
        }
        for section, spots in fd.tests.items():
            preds = {s: fold_predictions(m, spots, section, fd) for s, m in models.items()}
            for method in METHODS:
                rows = {f"seed {s}": p[method] for s, p in preds.items()}
                rows["ensemble"] = np.mean(list(rows.values()), axis=0)
                per_section = per_method[method]
                for name, pred in rows.items():
                    scores = score_predictions(pred, spots.expression, fd.genes, fd.sets, spots.tumor, fd.panel)
                    per_section.setdefault(name, {})[section] = {k: scores[k] for k in METRICS}
                print(
                    fold,
                    section,
                    method,
                    " ".join(f"{n} {per_section[n][section]['r_heg50']:.3f}" for n in rows),
                    flush=True,
                )
    summaries = {
        method: {
            name: {k: nanmean([v[k] for v in rows.values()]) for k in METRICS} | {"sections": sorted(rows)}
            for name, rows in per_section.items()
        }
        for method, per_section in per_method.items()
    }
    out = {
        "what": f"CMRCNet retrieval ({args.config}), {FOLDS_IN_WORDS[args.protocol]}: each seed's "
        f"model and the mean of the predictions of seeds {', '.join(map(str, args.seeds))} (one ensemble)",
        "protocol": args.protocol,
        "views": args.views,
        "runs": {str(s): str(p) for s, p in roots.items()},
        "summary": summaries["retrieval"],
        "per_section": per_method["retrieval"],
        "methods": {m: {"summary": summaries[m], "per_section": per_method[m]} for m in METHODS},
    }
    out_path.write_text(json.dumps(out, indent=1), encoding="utf-8")
    for method, summary in summaries.items():
        for name, row in summary.items():
            print(f"{method:22s} {name:10s}", " ".join(f"{k} {row[k]:.3f}" for k in METRICS))


if __name__ == "__main__":
    main()
