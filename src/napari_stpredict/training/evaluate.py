"""`stpredict evaluate`: the evaluation protocol of docs/ARCHITECTURE.md on her2st sections with images.

Two protocols, never mixed up:

- ``patient``: patient-level folds (train on patient C, test on B4; train on B4, test on
  C2-C6). Nothing of the held-out patient is in training, gene or marker choice, or the
  bank. The honest headline.
- ``loso_C``: leave one section of patient C out, train on the other sections with
  images (adjacent slices of the same patient): optimistic, kept only to set figures
  beside HisToGene/Hist2ST/mclSTExp.

Every fold trains each model variant and scores it together with the baselines, writing
one JSON per (protocol, fold, variant); reruns skip what exists (resumable), and any
fold can be run on its own.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..vocabulary import GeneIndex, marker_zscore
from .metrics import gene_gene_agreement, nanmean, panel_zscore, pearson_per_gene, roc_auc, top_genes
from .train import TrainConfig, recipe_fields

__all__ = ["EvalConfig", "PROTOCOLS", "iter_evaluate", "summarise", "markdown_table", "VARIANTS"]

IMAGED_C = ["C2", "C3", "C4", "C5", "C6"]
PROTOCOLS: dict[str, dict[str, Any]] = {
    "patient": {
        "label": "patient-level folds (headline)",
        "folds": {
            "test_B": {"train": list(IMAGED_C), "test": ["B4"], "patient": "B"},
            "test_C": {"train": ["B4"], "test": list(IMAGED_C), "patient": "C"},
        },
    },
    "loso_C": {
        "label": "leave-one-section-out within patient C (optimistic: adjacent slices in training)",
        "folds": {
            f"test_{s}": {"train": ["B4"] + [c for c in IMAGED_C if c != s], "test": [s], "patient": None}
            for s in IMAGED_C
        },
    },
}

#: Trained variants (name -> reconstruction branch on/off) and baselines.
VARIANTS = {"cmrcnet": True, "contrastive": False}
BASELINES = ("ridge_features", "untrained")


@dataclass
class EvalConfig:
    """Evaluation settings: the training recipe every fold uses, and what to run."""

    train: TrainConfig = field(default_factory=TrainConfig)
    out_dir: str = "evaluation/results"
    run_dir: str = "runs/eval"
    #: Optimizer steps per training in ``--quick`` (the full run uses ``train.steps``).
    quick_steps: int = 400
    bank_other_patients: bool = True
    n_genes_set: int = 50

    @classmethod
    def from_yaml(cls, path: str | Path) -> EvalConfig:
        from .train import check_train_config, read_yaml_config

        data = read_yaml_config(Path(path))
        train_data = data.pop("train", {}) or {}
        known = set(cls.__dataclass_fields__) - {"train"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{path}: unknown evaluation config keys: {', '.join(unknown)}")
        try:
            if not isinstance(train_data, dict):
                raise ValueError(f"must be a mapping of training settings, got {type(train_data).__name__}")
            train = TrainConfig.from_dict(train_data)
            # The folds choose their own sections; the rest of the training recipe is checked here.
            check_train_config(
                replace(train, train_sections=train.train_sections or ["B4"], bank_sections=[], marker_sections=[])
            )
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: train: {exc}") from exc
        return cls(train=train, **data)


def _fold_train_config(cfg: EvalConfig, protocol: str, fold: str, variant: str, quick: bool) -> TrainConfig:
    from ..io.st_data import her2st_sections

    spec = PROTOCOLS[protocol]["folds"][fold]
    tc = copy.deepcopy(cfg.train)
    tc.train_sections = list(spec["train"])
    tc.model.reconstruction = VARIANTS.get(variant, True)
    if quick:
        tc.steps = cfg.quick_steps
    # Count-only sections of patients other than the held-out one choose markers and join
    # the bank; the held-out patient's (or, within C, the held-out section's) never do.
    held_out_patient = spec["patient"]
    held_out = set(spec["test"])
    others = [
        s
        for s in her2st_sections(tc.her2st)
        if s not in held_out and s not in tc.train_sections and (held_out_patient is None or s[0] != held_out_patient)
    ]
    tc.marker_sections = others
    tc.bank_sections = others if cfg.bank_other_patients else []
    return tc


def fold_recipe(cfg: EvalConfig, protocol: str, fold: str, variant: str, quick: bool) -> str:
    """A short fingerprint of everything a fold result depends on in the configuration.

    Parameters
    ----------
    cfg : EvalConfig
        The evaluation settings.
    protocol, fold, variant : str
        Which result.
    quick : bool
        Whether the ``--quick`` step budget applies.

    Returns
    -------
    str
        16 hex digits; equal for two runs exactly when their training recipes are equal
        (output and cache folders and the device do not count).
    """
    tc = recipe_fields(_fold_train_config(cfg, protocol, fold, variant, quick))
    relevant = {
        "train": tc,
        "variant": variant,
        "bank_other_patients": cfg.bank_other_patients,
        "n_genes_set": cfg.n_genes_set,
    }
    return hashlib.sha1(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def result_is_current(path: Path, recipe: str, steps: int | None = None) -> bool:
    """Whether a fold result exists and was computed with this recipe (so it can be skipped).

    Parameters
    ----------
    path : Path
        The fold result (JSON).
    recipe : str
        `fold_recipe` of the configuration now asked for.
    steps : int, optional
        Its step budget: checked instead for results written before recipes were
        recorded (those carry only ``training_length``; the oldest carry neither).

    Raises
    ------
    ValueError
        When ``path`` holds a result of another recipe (say, another step budget or
        seed): it is neither reused nor overwritten; the message says what to do.
    """
    if not path.exists():
        return False
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        stored = record.get("recipe")
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: unreadable fold result ({exc}); delete it to recompute that fold") from exc
    if stored is None:  # written before recipes were recorded
        stored_steps = (record.get("training_length") or {}).get("steps")
        if stored_steps is None or steps is None or stored_steps == steps:
            return True
        stored, recipe = f"{stored_steps} steps", f"{steps} steps"
    if stored != recipe:
        raise ValueError(
            f"{path}: computed with another training recipe than this configuration's "
            f"({stored}, now {recipe}); move that results folder aside or set another "
            "out_dir, so results of two recipes are never averaged together"
        )
    return True


def _scores(
    pred: np.ndarray,
    true: np.ndarray,
    genes: list[str],
    sets: dict[str, list[str]],
    tumor: np.ndarray,
    panel: list[str],
) -> dict[str, Any]:
    r = pearson_per_gene(pred, true)
    out: dict[str, Any] = {}
    for name, subset in sets.items():
        idx = [genes.index(g) for g in subset]
        out[f"r_{name}"] = nanmean(r[idx])
    out["r_all"] = nanmean(r)
    hvg = [genes.index(g) for g in sets["hvg50"]]
    out["gene_gene"] = gene_gene_agreement(pred[:, hvg], true[:, hvg])
    known = tumor >= 0
    out["tumor_auc"] = roc_auc(panel_zscore(pred[known], genes, panel), tumor[known] == 1) if known.any() else None
    out["r_per_gene"] = {
        g: (None if not np.isfinite(v) else round(float(v), 4))
        for g, v in zip(genes, r)
        if g in set(sum(sets.values(), []))
    }
    return out


def _around(fn, spots, section: str, tc: TrainConfig, weights: np.ndarray):
    """``fn`` of a held-out section's neighbouring patches (`map_neighbours`); None
    without context."""
    from .neighbours import map_neighbours

    if not np.any(weights):
        return None
    return map_neighbours(
        fn, spots, [section], tc.her2st, patch_um=tc.io.patch_um, input_px=tc.io.input_px, cache_dir=Path(tc.cache_dir)
    )


def _with_context(predict, embeddings, neighbours, weights: np.ndarray) -> np.ndarray:
    """``predict`` of the spots' embeddings, mixed with that of their neighbouring patches
    (the engine's spatial context) when ``weights`` are not all zero."""
    from ..inference.context import mix_with_neighbours

    centre = predict(embeddings)
    if neighbours is None or not np.any(weights):
        return centre
    around = np.stack([predict(e) for e in neighbours[0]])
    return mix_with_neighbours(centre, around, neighbours[1], weights)


def _predict_sets(
    model, embs, train_expression: np.ndarray, neighbours, train_encoded: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Predictions of a trained model with its retrieval settings (top-k, spatial
    context) from a held-out section's spot embeddings ``embs``: retrieval over its bank,
    over the training spots only (to measure what the extra bank sections add), and its
    ridge head.

    ``neighbours`` is ``(embeddings, tissue)`` of the spots' 8 neighbouring patches
    (`map_neighbours`), or None without context. ``train_encoded`` is what the model's
    expression encoder takes of the training spots (`encoder_input`; default: their
    expression)."""
    import torch

    from ..inference.context import neighbour_weights
    from ..model import ReferenceBank, retrieve

    top_k = model.retrieval.top_k
    weights = neighbour_weights(model.retrieval.context_sigma_um, model.io.patch_um)
    with torch.inference_mode():
        train_expr = torch.from_numpy(train_expression).to(model.device)
        encoded = torch.from_numpy(train_encoded if train_encoded is not None else train_expression).to(model.device)
        train_bank = ReferenceBank(model.network.encode_expression(encoded), train_expr)

    def by(method: str):
        return lambda e: model.predict_embeddings(e, method=method, top_k=top_k)[0].cpu().numpy()

    return {
        "retrieval": _with_context(by("retrieval"), embs, neighbours, weights),
        "ridge": _with_context(by("ridge"), embs, neighbours, weights),
        "retrieval_train_bank": _with_context(
            lambda e: retrieve(e, train_bank, top_k=top_k)[0].cpu().numpy(), embs, neighbours, weights
        ),
    }


def _embedded(model, features, raw_neighbours, adaptation):
    """A section's spot embeddings and its neighbours' ``(embeddings, tissue)`` (or None)
    from their raw features, adapted with ``adaptation`` (None: not adapted)."""
    embs = model.embed_features(features, adaptation=adaptation)
    if raw_neighbours is None:
        return embs, None
    return embs, ([model.embed_features(f, adaptation=adaptation) for f in raw_neighbours[0]], raw_neighbours[1])


def held_out_predictions(model, spots, section: str, tc: TrainConfig) -> np.ndarray:
    """Retrieval predictions of a held-out section with the model's own top-k, spatial
    context and per-slide adaptation: what `iter_evaluate` scores as ``retrieval``.

    Parameters
    ----------
    model : STModel
        A fold model.
    spots : SpotSet
        The section's spots, with patches.
    section : str
        Its id (her2st) or ``.h5ad`` path, to read the neighbouring patches.
    tc : TrainConfig
        Where the data and patch cache are (``her2st``, ``cache_dir``).

    Returns
    -------
    numpy.ndarray
        ``(spots, genes)``.
    """
    from ..inference.context import neighbour_weights

    weights = neighbour_weights(model.retrieval.context_sigma_um, model.io.patch_um)
    features = model.features_many(spots.patches)
    embs, neighbours = _embedded(
        model, features, _around(model.features_many, spots, section, tc, weights), model.slide_adaptation(features)
    )
    return _with_context(lambda e: model.predict_embeddings(e)[0].cpu().numpy(), embs, neighbours, weights)


#: Ablation of the retrieval settings: the paper's top-k without context, then each
#: change of the recipe alone, then both (same trained model, same held-out spots).
ABLATION_BASE_TOP_K = 50


def _ablation(model, features, raw_neighbours, adaptation) -> dict[str, np.ndarray]:
    """Retrieval predictions of every combination of the recipe's top-k, context and
    per-slide adaptation with the paper's top-k (50), no context and no adaptation, keyed
    ``k<top_k>_ctx<sigma>`` plus ``_adapt-<mode>`` where adapted."""
    from ..inference.context import neighbour_weights

    out = {}
    for adapted in [None] + ([adaptation] if adaptation is not None else []):
        embs, neighbours = _embedded(model, features, raw_neighbours, adapted)
        suffix = f"_adapt-{adapted.mode}" if adapted is not None else ""
        for k in sorted({ABLATION_BASE_TOP_K, model.retrieval.top_k}):
            for sigma in sorted({0.0, float(model.retrieval.context_sigma_um)}):
                weights = neighbour_weights(sigma, model.io.patch_um)

                def predict(e, k=k):
                    return model.predict_embeddings(e, method="retrieval", top_k=k)[0].cpu().numpy()

                out[f"k{k}_ctx{sigma:g}{suffix}"] = _with_context(predict, embs, neighbours, weights)
    return out


def _calls(called: np.ndarray, label: np.ndarray) -> dict[str, float]:
    return {
        "sensitivity": round(float((called & label).sum() / max(label.sum(), 1)), 4),
        "specificity": round(float((~called & ~label).sum() / max((~label).sum(), 1)), 4),
        "called_share": round(float(called.mean()), 4),
    }


def trust_scores(model, spots, retrieval: np.ndarray, panel: list[str], features=None) -> dict[str, Any]:
    """Out-of-domain share and tumour calls of a held-out section, from a calibrated model.

    Parameters
    ----------
    model : STModel
        With ``calibration`` set (its tumour part computed on the fold's panel).
    spots : SpotSet
        The held-out section (patches, tumour labels: 1 cancer, 0 other, -1 unknown).
    retrieval : numpy.ndarray
        The model's retrieval predictions for those spots.
    panel : list of str
        The fold's marker panel.
    features : torch.Tensor, optional
        The spots' raw pooled features, if computed already (the out-of-domain score is
        always measured on raw, unadapted features).

    Returns
    -------
    dict
        ``ood_share``; ``absolute`` (training-spot units, the calibrated threshold,
        out-of-domain spots not called) and ``slide_otsu`` (the section's own z-scores,
        Otsu's threshold on them): sensitivity, specificity and share called against the
        cancer labels; the AUC of both scores.
    """
    from skimage.filters import threshold_otsu

    feats = features if features is not None else model.features_many(spots.patches)
    cal = model.calibration
    ood = model.domain_distance(feats).cpu().numpy() > cal["domain"]["threshold"]
    genes = model.genes
    idx = GeneIndex(genes).positions(panel)
    mean = cal["tumor"]["gene_mean"].cpu().numpy()[idx]
    sd = cal["tumor"]["gene_std"].cpu().numpy()[idx]
    absolute = marker_zscore(retrieval[:, idx], mean, sd)
    per_slide = panel_zscore(retrieval, genes, panel)
    known = spots.tumor >= 0
    label = spots.tumor[known] == 1
    out: dict[str, Any] = {
        "ood_share": round(float(ood.mean()), 4),
        "spots": int(len(spots)),
        "labelled": int(known.sum()),
        "cancer_share": round(float(label.mean()), 4),
    }
    threshold = cal["tumor"]["threshold"]
    if threshold is not None:
        called = (absolute > threshold) & ~ood
        out["absolute"] = {
            "threshold": threshold,
            "auc": round(roc_auc(absolute[known], label), 4),
            **_calls(called[known], label),
        }
    otsu = float(threshold_otsu(per_slide))
    out["slide_otsu"] = {
        "threshold": round(otsu, 4),
        "auc": round(roc_auc(per_slide[known], label), 4),
        **_calls((per_slide > otsu)[known], label),
    }
    # Per-spot scores of the labelled spots, so that other tumour rules (a per-slide
    # quantile or mixture with an absolute floor, issue 19 item 4) can be compared on
    # the same predictions without retraining (evaluation/experiments/tumour_rule).
    out["labelled_scores"] = {
        "absolute": [round(float(v), 4) for v in absolute[known]],
        "slide_z": [round(float(v), 4) for v in per_slide[known]],
        "out_of_domain": [bool(v) for v in ood[known]],
        "cancer": [bool(v) for v in label],
    }
    return out


def _untrained_model(tc: TrainConfig, genes, bank_expression):
    """The trivial baseline: a randomly initialised network with the same bank."""
    import torch

    from ..model import ReferenceBank, STModel, create_model

    cfg = copy.deepcopy(tc.model)
    cfg.n_genes = len(genes)
    torch.manual_seed(tc.seed)
    net = create_model(cfg).eval()
    with torch.inference_mode():
        emb = net.encode_expression(torch.from_numpy(bank_expression))
    io = copy.deepcopy(tc.io)
    io.genes = list(genes)
    return STModel(net, io, ReferenceBank(emb, torch.from_numpy(bank_expression)), device="cpu")


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
    tc = _fold_train_config(cfg, protocol, fold, "cmrcnet", quick)
    genes, markers = resolve_genes(copy.deepcopy(tc))
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
    for protocol in protocols or list(PROTOCOLS):
        for fold in folds or list(PROTOCOLS[protocol]["folds"]):
            if fold not in PROTOCOLS[protocol]["folds"]:
                continue
            spec = PROTOCOLS[protocol]["folds"][fold]
            steps = _fold_train_config(cfg, protocol, fold, "cmrcnet", quick).steps
            recipes = {
                v: fold_recipe(cfg, protocol, fold, v, quick) for v in (variants or list(VARIANTS) + list(BASELINES))
            }
            todo = [
                v
                for v, recipe in recipes.items()
                if not result_is_current(out_root / protocol / fold / f"{v}.json", recipe, steps)
            ]
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
                    tc = _fold_train_config(cfg, protocol, fold, variant, quick)
                    tc.genes = genes  # the fold's gene list, chosen once on its training data
                    run_dir = run_root / protocol / fold / variant
                    ckpt = yield from relabelled(iter_train(tc, run_dir), protocol=protocol, fold=fold, variant=variant)
                    model = load_model(ckpt, device=tc.device)
                    # The fold's own marker panel (its model was trained on a given gene list, so
                    # its provenance holds none): calibrate the tumour threshold on it.
                    train_context = context_embeddings(
                        model, train, spec["train"], tc.her2st, cache_dir=Path(tc.cache_dir)
                    )
                    model.calibration = compute_calibration(model, train, markers=panel, neighbours=train_context)
                    model.to(model.device)
                    for s, t in tests.items():
                        features = model.features_many(t.patches)
                        adaptation = model.slide_adaptation(features)  # the engine's per-slide rule
                        raw_neighbours = _around(model.features_many, t, s, tc, weights)
                        embs, neighbours = _embedded(model, features, raw_neighbours, adaptation)
                        predictions = _predict_sets(
                            model, embs, train.expression, neighbours, encoder_input(train, tc.expression_targets)
                        )
                        for method, pred in predictions.items():
                            results.setdefault(method, {})[s] = _scores(pred, t.expression, genes, sets, t.tumor, panel)
                        trust[s] = trust_scores(model, t, predictions["retrieval"], panel, features=features)
                        if adaptation is not None:
                            trust[s]["adaptation"] = adaptation.summary()
                        for setting, pred in _ablation(model, features, raw_neighbours, adaptation).items():
                            scores = _scores(pred, t.expression, genes, sets, t.tumor, panel)
                            scores.pop("r_per_gene")
                            ablation.setdefault(setting, {})[s] = scores
                elif variant == "ridge_features":
                    # Baselines get the same spatial context as the model.
                    head = fit_ridge(patch_features(train.patches), train.expression)

                    def ridge_on(features, head=head):
                        return head(torch.from_numpy(features)).numpy()

                    for s, t in tests.items():
                        pred = _with_context(
                            ridge_on,
                            patch_features(t.patches),
                            _around(patch_features, t, s, base_tc, weights),
                            weights,
                        )
                        results.setdefault("ridge", {})[s] = _scores(pred, t.expression, genes, sets, t.tumor, panel)
                elif variant == "untrained":
                    model = _untrained_model(base_tc, genes, train.expression)

                    def retrieve_untrained(e, model=model, k=base_tc.top_k):
                        return model.predict_embeddings(e, method="retrieval", top_k=k)[0].numpy()

                    for s, t in tests.items():
                        neighbours = _around(model.embed_many, t, s, base_tc, weights)
                        pred = _with_context(retrieve_untrained, model.embed_many(t.patches), neighbours, weights)
                        results.setdefault("retrieval", {})[s] = _scores(
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


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    raise TypeError(type(o))


METRICS = ("r_heg50", "r_hvg50", "r_markers", "r_all", "gene_gene", "tumor_auc")


def summarise(results_dir: str | Path) -> dict[str, Any]:
    """Average every (variant, method) over the held-out sections of each protocol.

    Each held-out section counts once (patient protocol: B4 and C2-C6; LOSO: C2-C6).
    """
    root = Path(results_dir)
    summary: dict[str, Any] = {}
    for protocol in PROTOCOLS:
        rows: dict[str, dict[str, list]] = {}
        ceilings = []
        for path in sorted((root / protocol).glob("*/*.json")):
            rec = json.loads(path.read_text(encoding="utf-8"))
            for method, per_section in rec["results"].items():
                row = rows.setdefault(f"{rec['variant']}:{method}", {m: [] for m in METRICS} | {"sections": []})
                for section, scores in per_section.items():
                    row["sections"].append(section)
                    for m in METRICS:
                        row[m].append(scores.get(m))
            if rec["variant"] == "untrained":
                ceilings += [v for v in rec["tumor_auc_ceiling_measured"].values() if v is not None]
        summary[protocol] = {
            "label": PROTOCOLS[protocol]["label"],
            "methods": {
                name: {m: nanmean([v for v in row[m] if v is not None]) for m in METRICS}
                | {"n_sections": len(row["sections"]), "sections": sorted(row["sections"])}
                for name, row in rows.items()
            },
            "tumor_auc_ceiling_measured": nanmean(ceilings) if ceilings else None,
        }
    return summary


_NAMES = {
    "cmrcnet:retrieval_train_bank": "CMRCNet, retrieval over the training spots (the paper's setting)",
    "cmrcnet:retrieval": "CMRCNet, retrieval, bank + other patients' count-only spots",
    "cmrcnet:ridge": "CMRCNet, ridge head",
    "contrastive:retrieval_train_bank": "contrastive only (BLEEP), retrieval over the training spots",
    "contrastive:retrieval": "contrastive only (BLEEP), retrieval, bank + other patients' spots",
    "contrastive:ridge": "contrastive only (BLEEP), ridge head",
    "ridge_features:ridge": "ridge on colour/stain/texture statistics",
    "untrained:retrieval": "untrained encoder, retrieval (trivial)",
}


def markdown_table(summary: dict[str, Any]) -> str:
    """The README table: one block per protocol, methods as rows."""
    lines = []
    for protocol, block in summary.items():
        if not block["methods"]:
            continue
        lines.append(f"**{block['label']}** ({protocol})\n")
        lines.append("| method | HEG50 r | HVG50 r | markers r | all genes r | gene-gene | tumour AUC |")
        lines.append("|---|---|---|---|---|---|---|")
        for name in _NAMES:
            if name not in block["methods"]:
                continue
            m = block["methods"][name]
            cells = [f"{m[k]:.3f}" if m[k] is not None and np.isfinite(m[k]) else "-" for k in METRICS]
            lines.append(f"| {_NAMES[name]} | " + " | ".join(cells) + " |")
        ceiling = block.get("tumor_auc_ceiling_measured")
        if ceiling is not None:
            lines.append(f"| measured expression (ceiling) | | | | | | {ceiling:.3f} |")
        n = next(iter(block["methods"].values()))["n_sections"]
        lines.append(f"\nMean over {n} held-out sections.\n")
    return "\n".join(lines)


def agreement_table(
    quick: dict[str, Any], full: dict[str, Any], tolerance: float = 0.03, heading: str = "Quick minus full"
) -> str:
    """How far the ``--quick`` summary is from the full one, cell by cell.

    Parameters
    ----------
    quick, full : dict
        Outputs of `summarise` for the quick and the full results.
    tolerance : float
        The agreement asked of the quick setting (absolute difference).
    heading : str
        What is subtracted from what (the first words of the text).

    Returns
    -------
    str
        Markdown: per protocol, quick minus full for every method and metric both hold,
        the largest absolute difference, and whether every cell is within ``tolerance``.
    """
    lines = [f"{heading}, per cell (agreement asked: within ±{tolerance:.2f}).\n"]
    worst_all = 0.0
    for protocol, block in quick.items():
        other = full.get(protocol, {}).get("methods", {})
        names = [n for n in _NAMES if n in block.get("methods", {}) and n in other]
        if not names:
            continue
        lines.append(f"**{block['label']}** ({protocol})\n")
        lines.append("| method | HEG50 r | HVG50 r | markers r | all genes r | gene-gene | tumour AUC |")
        lines.append("|---|---|---|---|---|---|---|")
        for name in names:
            diffs = [block["methods"][name][k] - other[name][k] for k in METRICS]
            worst_all = max([worst_all] + [abs(d) for d in diffs if np.isfinite(d)])
            lines.append(f"| {_NAMES[name]} | " + " | ".join(f"{d:+.3f}" for d in diffs) + " |")
        lines.append("")
    verdict = "within" if worst_all <= tolerance else "NOT within"
    lines.append(f"Largest absolute difference: {worst_all:.3f} ({verdict} ±{tolerance:.2f}).")
    return "\n".join(lines) + "\n"


#: Rows of the seed table: the shipped recipe's methods, then the ablation of its
#: retrieval settings (same trained models).
_SEED_ROWS = {
    "cmrcnet:retrieval": "CMRCNet, retrieval (the shipped recipe)",
    "cmrcnet:retrieval_train_bank": "CMRCNet, retrieval over the training spots only",
    "cmrcnet:ridge": "CMRCNet, ridge head",
}


def _ablation_label(setting: str) -> str:
    setting, _, adapted = setting.partition("_adapt-")
    k, ctx = setting.removeprefix("k").split("_ctx")
    context = "no context" if float(ctx) == 0 else f"context σ {ctx} µm"
    return f"ablation: top-k {k}, {context}" + (f", adapted to the slide ({adapted})" if adapted else "")


def seed_summary(result_dirs: dict[int, str | Path], protocol: str = "patient") -> dict[str, Any]:
    """Per seed, the mean over held-out sections of every method and ablation setting;
    then mean and sd over the seeds.

    Parameters
    ----------
    result_dirs : dict
        Seed -> a results folder written by ``stpredict evaluate`` (``.../full``).
    protocol : str
        Which protocol's folds to read.

    Returns
    -------
    dict
        ``{row: {"per_seed": {seed: {metric: value}}, "mean": {...}, "sd": {...}}}``;
        rows are ``variant:method`` and ``ablation:<setting>`` (cmrcnet only).
    """
    import statistics

    rows: dict[str, dict] = {}
    for seed, folder in result_dirs.items():
        per_row: dict[str, dict[str, list]] = {}
        for path in sorted((Path(folder) / protocol).glob("*/cmrcnet.json")):
            rec = json.loads(path.read_text(encoding="utf-8"))
            blocks = {f"cmrcnet:{m}": v for m, v in rec["results"].items()}
            blocks |= {f"ablation:{s}": v for s, v in rec.get("ablation", {}).items()}
            for name, per_section in blocks.items():
                row = per_row.setdefault(name, {m: [] for m in METRICS})
                for scores in per_section.values():
                    for m in METRICS:
                        if scores.get(m) is not None:
                            row[m].append(scores[m])
        for name, row in per_row.items():
            entry = rows.setdefault(name, {"per_seed": {}})
            entry["per_seed"][seed] = {m: nanmean(v) if v else None for m, v in row.items()}
    for entry in rows.values():
        seeds = list(entry["per_seed"].values())
        entry["mean"], entry["sd"] = {}, {}
        for m in METRICS:
            values = [s[m] for s in seeds if s[m] is not None]
            entry["mean"][m] = statistics.mean(values) if values else None
            entry["sd"][m] = statistics.stdev(values) if len(values) > 1 else None
    return rows


def seed_table(summary: dict[str, Any]) -> str:
    """Markdown of `seed_summary`: mean ± sd over seeds, the recipe's rows then the ablation."""
    lines = [
        "| method | seeds | HEG50 r | HVG50 r | markers r | all genes r | gene-gene | tumour AUC |",
        "|---|---|---|---|---|---|---|---|",
    ]
    names = [n for n in _SEED_ROWS if n in summary]
    names += sorted((n for n in summary if n.startswith("ablation:")), key=_ablation_order)
    for name in names:
        entry = summary[name]
        label = _SEED_ROWS.get(name) or _ablation_label(name.removeprefix("ablation:"))
        cells = []
        for m in METRICS:
            mean, sd = entry["mean"][m], entry["sd"][m]
            cells.append("-" if mean is None else f"{mean:.3f}" + (f" ± {sd:.3f}" if sd is not None else ""))
        lines.append(f"| {label} | {len(entry['per_seed'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _ablation_order(name: str) -> tuple[bool, int, float]:
    setting, _, adapted = name.removeprefix("ablation:k").partition("_adapt-")
    k, ctx = setting.split("_ctx")
    return bool(adapted), int(k), float(ctx)
