"""The evaluation protocol's folds and settings (docs/ARCHITECTURE.md, "Evaluation").

Two protocols, never mixed up:

- ``patient``: patient-level folds (train on patient C, test on B4; train on B4, test on
  C2-C6). Nothing of the held-out patient is in training, gene or marker choice, or the
  bank. The honest headline.
- ``loso_C``: leave one section of patient C out, train on the other sections with
  images (adjacent slices of the same patient): optimistic, kept only to set figures
  beside HisToGene/Hist2ST/mclSTExp.

A fold result is current when its recipe (`fold_recipe`) is the configuration's: reruns
skip it, and a result of another recipe is never averaged with this one's.

A pretrained image encoder (``train.init_encoder``) is per fold: ``{fold}`` in its path
names the fold (``runs/pretrain/{fold}/encoder.pt``), so every fold starts from an encoder
whose self-supervised pretraining excluded that fold's held-out sections.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .config import TrainConfig, recipe_fields

__all__ = [
    "BASELINES",
    "FOLD_PLACEHOLDER",
    "EvalConfig",
    "IMAGED_C",
    "METRICS",
    "PROTOCOLS",
    "VARIANTS",
    "fold_recipe",
    "fold_train_config",
    "missing_fold_encoders",
    "result_is_current",
]

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
#: The figures of every fold result, in the tables' column order.
METRICS = ("r_heg50", "r_hvg50", "r_markers", "r_all", "gene_gene", "tumor_auc")
#: In ``train.init_encoder``, replaced by the fold's name (one pretrained encoder per fold).
FOLD_PLACEHOLDER = "{fold}"


@dataclass(frozen=True)
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
        from .config import check_train_config, read_yaml_config

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
            _check_encoder_template(train.init_encoder)
            # The folds choose their own sections, and a per-fold encoder is looked for when its
            # fold is run (`missing_fold_encoders`); the rest of the recipe is checked here.
            per_fold = train.init_encoder is not None and FOLD_PLACEHOLDER in train.init_encoder
            check_train_config(
                replace(
                    train,
                    train_sections=train.train_sections or ["B4"],
                    bank_sections=[],
                    marker_sections=[],
                    init_encoder=None if per_fold else train.init_encoder,
                )
            )
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: train: {exc}") from exc
        return cls(train=train, **data)

    def overridden(self, *, device: str | None = None, seed: int | None = None) -> EvalConfig:
        """A copy with the command line's ``--device`` and ``--seed`` (self unchanged).

        Another seed than the configuration's writes its results to
        ``<out_dir>/seeds/seed<N>`` and its runs to ``<run_dir>/seed<N>``, so seeds are
        never averaged together by accident.
        """
        train = self.train
        if device:
            train = replace(train, device=device)
        if seed is None or seed == train.seed:
            return replace(self, train=train)
        return replace(
            self,
            train=replace(train, seed=seed),
            out_dir=str(Path(self.out_dir) / "seeds" / f"seed{seed}"),
            run_dir=str(Path(self.run_dir) / f"seed{seed}"),
        )


def fold_train_config(cfg: EvalConfig, protocol: str, fold: str, variant: str, quick: bool) -> TrainConfig:
    """The training configuration of one fold and variant: its sections, and the count-only
    sections of the other patients as marker choosers and bank (never the held-out one's)."""
    from ..io.st_data import her2st_sections

    spec = PROTOCOLS[protocol]["folds"][fold]
    base = cfg.train
    train_sections = list(spec["train"])
    # Count-only sections of patients other than the held-out one choose markers and join
    # the bank; the held-out patient's (or, within C, the held-out section's) never do.
    held_out_patient = spec["patient"]
    held_out = set(spec["test"])
    others = [
        s
        for s in her2st_sections(base.her2st)
        if s not in held_out and s not in train_sections and (held_out_patient is None or s[0] != held_out_patient)
    ]
    encoder = base.init_encoder
    if variant not in VARIANTS:
        encoder = None  # the baselines train no image encoder: their results do not depend on it
    elif encoder is not None:
        encoder = encoder.replace(FOLD_PLACEHOLDER, fold)
    return replace(
        base,
        train_sections=train_sections,
        init_encoder=encoder,
        model=replace(base.model, reconstruction=VARIANTS.get(variant, True)),
        steps=cfg.quick_steps if quick else base.steps,
        marker_sections=others,
        bank_sections=others if cfg.bank_other_patients else [],
    )


def missing_fold_encoders(cfg: EvalConfig, planned: list[tuple[str, str, str]], quick: bool = False) -> list[str]:
    """The pretrained encoders that the planned trainings need and that do not exist.

    Parameters
    ----------
    cfg : EvalConfig
        The evaluation settings.
    planned : list of (protocol, fold, variant)
        The results about to be computed.
    quick : bool
        Whether the ``--quick`` step budget applies.

    Returns
    -------
    list of str
        One line per missing file, naming the fold (empty when nothing is missing).
    """
    missing = []
    for protocol, fold, variant in planned:
        path = fold_train_config(cfg, protocol, fold, variant, quick).init_encoder
        if path is not None and not Path(path).is_file():
            missing.append(f"fold {fold}: init_encoder {path}: no such file (write it with stpredict pretrain)")
    return sorted(set(missing))


def _check_encoder_template(path: str | None) -> None:
    """A per-fold encoder path may hold ``{fold}`` and no other placeholder."""
    if path is None:
        return
    rest = path.replace(FOLD_PLACEHOLDER, "")
    if "{" in rest or "}" in rest:
        raise ValueError(f"init_encoder: {path}: the only placeholder allowed is {FOLD_PLACEHOLDER}")


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
    tc = recipe_fields(fold_train_config(cfg, protocol, fold, variant, quick))
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
