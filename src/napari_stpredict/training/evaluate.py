"""`stpredict evaluate`: running the evaluation protocol of docs/ARCHITECTURE.md on her2st sections with images.

The two protocols (patient-level folds, the headline; leave-one-section-out within
patient C, for the literature) are defined in `napari_stpredict.training.protocol`.

Every fold trains each model variant and scores it together with the baselines, writing
one JSON per (protocol, fold, variant); reruns skip what exists (resumable), and any
fold can be run on its own. The folds are in `protocol`, the figures in `scoring`, the
tables in `report`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from .config import TrainConfig
from .metrics import panel_zscore, roc_auc, top_genes
from .protocol import (
    BASELINES,
    PROTOCOLS,
    VARIANTS,
    EvalConfig,
    fold_recipe,
    fold_train_config,
    missing_fold_encoders,
    result_is_current,
)
from .report import markdown_table, summarise
from .scoring import (
    ablation_predictions,
    around_section,
    embedded_with_context,
    predict_sets,
    score_predictions,
    trust_scores,
    untrained_model,
    with_context,
)

# EvalConfig, PROTOCOLS, VARIANTS, summarise and markdown_table are this module's public
# names since 0.1.0; they live in protocol and report now.
__all__ = [
    "EvalConfig",
    "FoldData",
    "PROTOCOLS",
    "VARIANTS",
    "fold_data",
    "iter_evaluate",
    "markdown_table",
    "summarise",
]


@dataclass
class FoldData:
    """What every variant of one fold shares: genes, panel, spots and gene sets."""

    train_config: TrainConfig
    genes: list[str]
    markers: dict[str, Any]
    panel: list[str]
    train: Any  # SpotSet of the training sections
    tests: dict[str, Any]  # held-out section -> SpotSet
    sets: dict[str, list[str]]  # heg50, hvg50, markers: chosen on the training sections only


def fold_data(cfg: EvalConfig, protocol: str, fold: str, quick: bool = False) -> FoldData:
    """Choose a fold's genes and marker panel on its training data and read its spots.

    Parameters
    ----------
    cfg : EvalConfig
        The evaluation recipe.
    protocol, fold : str
        Keys of `PROTOCOLS`.
    quick : bool
        Whether the ``--quick`` training length applies (to the returned train config).

    Returns
    -------
    FoldData
    """
    from .data import SpotSet
    from .sections import section_spots
    from .train import resolve_genes

    spec = PROTOCOLS[protocol]["folds"][fold]
    tc = fold_train_config(cfg, protocol, fold, "cmrcnet", quick)
    genes, markers = resolve_genes(tc)
    panel = markers["panel"]
    kw = {"patch_um": tc.io.patch_um, "input_px": tc.io.input_px, "cache_dir": Path(tc.cache_dir)}
    train = SpotSet.concat([section_spots(s, tc.her2st, genes, **kw) for s in spec["train"]])
    tests = {s: section_spots(s, tc.her2st, genes, **kw) for s in spec["test"]}
    sets = {
        "heg50": top_genes(train.expression, genes, cfg.n_genes_set, by="mean"),
        "hvg50": top_genes(train.expression, genes, cfg.n_genes_set, by="var"),
        "markers": [g for g in panel if g in genes],
    }
    return FoldData(tc, genes, markers, panel, train, tests, sets)


def iter_evaluate(cfg: EvalConfig, *, protocols=None, folds=None, variants=None, quick: bool = False) -> Iterator[dict]:
    """Run folds, yielding progress; write one JSON per (protocol, fold, variant) and skip existing ones."""
    import torch

    from .._progress import relabelled
    from ..inference.context import neighbour_weights
    from ..model import fit_ridge, load_model
    from .calibration import compute_calibration
    from .features import patch_features
    from .neighbours import context_embeddings
    from .train import encoder_input, iter_train

    out_root = Path(cfg.out_dir) / ("quick" if quick else "full")
    run_root = Path(cfg.run_dir) / ("quick" if quick else "full")
    plan = _plan(cfg, out_root, protocols, folds, variants, quick)
    # Every fold's pretrained encoder is looked for before the first training starts.
    missing = missing_fold_encoders(cfg, [(p, f, v) for p, f, _, todo in plan for v in todo], quick)
    if missing:
        raise ValueError("; ".join(missing))
    for protocol, fold, recipes, todo in plan:
        spec = PROTOCOLS[protocol]["folds"][fold]
        if not todo:
            yield {"protocol": protocol, "fold": fold, "stage": "skip", "message": "results exist"}
            continue
        fd = fold_data(cfg, protocol, fold, quick)
        base_tc, genes, markers, panel = fd.train_config, fd.genes, fd.markers, fd.panel
        train, tests, sets = fd.train, fd.tests, fd.sets
        context = {
            "protocol": protocol,
            "protocol_label": PROTOCOLS[protocol]["label"],
            "fold": fold,
            "train_sections": spec["train"],
            "test_sections": spec["test"],
            "genes": len(genes),
            "marker_panel": markers,
            "gene_sets": sets,
            "quick": quick,
            "training_length": {"steps": base_tc.steps, "epochs": None if base_tc.steps else base_tc.epochs},
            "retrieval": {
                "top_k": base_tc.top_k,
                "context_sigma_um": base_tc.context_sigma_um,
                "adaptation": base_tc.adaptation,
            },
            "bank_sections": base_tc.bank_sections,
        }
        weights = neighbour_weights(base_tc.context_sigma_um, base_tc.io.patch_um)
        ceiling = {
            s: roc_auc(panel_zscore(t.expression[t.tumor >= 0], genes, panel), t.tumor[t.tumor >= 0] == 1)
            for s, t in tests.items()
        }
        for variant in todo:
            yield {"protocol": protocol, "fold": fold, "variant": variant, "stage": "start"}
            results: dict[str, dict] = {}
            trust: dict[str, dict] = {}
            ablation: dict[str, dict] = {}
            if variant in VARIANTS:
                # the fold's gene list, chosen once on its training data
                tc = replace(fold_train_config(cfg, protocol, fold, variant, quick), genes=genes)
                run_dir = run_root / protocol / fold / variant
                ckpt = yield from relabelled(iter_train(tc, run_dir), protocol=protocol, fold=fold, variant=variant)
                model = load_model(ckpt, device=tc.device)
                # The fold's own marker panel (its model was trained on a given gene list, so
                # its provenance holds none): calibrate the tumour threshold on it.
                train_context = context_embeddings(model, train, spec["train"], tc.her2st, cache_dir=Path(tc.cache_dir))
                model.calibration = compute_calibration(
                    model, train, markers=panel, counter=markers.get("counter_panel"), neighbours=train_context
                )
                model.to(model.device)
                for s, t in tests.items():
                    features = model.features_many(t.patches)
                    adaptation = model.slide_adaptation(features)  # the engine's per-slide rule
                    raw_neighbours = around_section(model.features_many, t, s, tc, weights)
                    embs, neighbours = embedded_with_context(model, features, raw_neighbours, adaptation)
                    predictions = predict_sets(
                        model, embs, train.expression, neighbours, encoder_input(train, tc.expression_targets)
                    )
                    for method, pred in predictions.items():
                        results.setdefault(method, {})[s] = score_predictions(
                            pred, t.expression, genes, sets, t.tumor, panel
                        )
                    trust[s] = trust_scores(model, t, predictions["retrieval"], panel, features=features)
                    if adaptation is not None:
                        trust[s]["adaptation"] = adaptation.summary()
                    for setting, pred in ablation_predictions(model, features, raw_neighbours, adaptation).items():
                        scores = score_predictions(pred, t.expression, genes, sets, t.tumor, panel)
                        scores.pop("r_per_gene")
                        ablation.setdefault(setting, {})[s] = scores
            elif variant == "ridge_features":
                # Baselines get the same spatial context as the model.
                head = fit_ridge(patch_features(train.patches), train.expression)

                def ridge_on(features, head=head):
                    return head(torch.from_numpy(features)).numpy()

                for s, t in tests.items():
                    pred = with_context(
                        ridge_on,
                        patch_features(t.patches),
                        around_section(patch_features, t, s, base_tc, weights),
                        weights,
                    )
                    results.setdefault("ridge", {})[s] = score_predictions(
                        pred, t.expression, genes, sets, t.tumor, panel
                    )
            elif variant == "untrained":
                model = untrained_model(base_tc, genes, train.expression)

                def retrieve_untrained(e, model=model, k=base_tc.top_k):
                    return model.predict_embeddings(e, method="retrieval", top_k=k)[0].numpy()

                for s, t in tests.items():
                    neighbours = around_section(model.embed_many, t, s, base_tc, weights)
                    pred = with_context(retrieve_untrained, model.embed_many(t.patches), neighbours, weights)
                    results.setdefault("retrieval", {})[s] = score_predictions(
                        pred, t.expression, genes, sets, t.tumor, panel
                    )
            record = {
                **context,
                "variant": variant,
                "recipe": recipes[variant],
                "results": results,
                "tumor_auc_ceiling_measured": ceiling,
            }
            if trust:
                record["trust"] = trust
            if ablation:
                record["ablation"] = ablation
            path = out_root / protocol / fold / f"{variant}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(record, indent=1, default=_json_default), encoding="utf-8")
            yield {"protocol": protocol, "fold": fold, "variant": variant, "stage": "done", "path": str(path)}


def _plan(cfg: EvalConfig, out_root: Path, protocols, folds, variants, quick: bool) -> list[tuple]:
    """(protocol, fold, recipe per variant, variants whose result is not current), in run order."""
    plan = []
    for protocol in protocols or list(PROTOCOLS):
        for fold in folds or list(PROTOCOLS[protocol]["folds"]):
            if fold not in PROTOCOLS[protocol]["folds"]:
                continue
            steps = fold_train_config(cfg, protocol, fold, "cmrcnet", quick).steps
            recipes = {
                v: fold_recipe(cfg, protocol, fold, v, quick) for v in (variants or list(VARIANTS) + list(BASELINES))
            }
            todo = [
                v
                for v, recipe in recipes.items()
                if not result_is_current(out_root / protocol / fold / f"{v}.json", recipe, steps)
            ]
            plan.append((protocol, fold, recipes, todo))
    return plan


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    raise TypeError(type(o))
