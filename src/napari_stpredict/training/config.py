"""The training configuration (`TrainConfig`): read from YAML, checked in one line naming
the file and key before any work, and reduced to the fields a result depends on
(`recipe_fields`) for fingerprints.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..model.config import IOContract, ModelConfig, from_dict, to_dict

__all__ = [
    "EXPRESSION_TARGETS",
    "TEST_TIME_FIELDS",
    "TrainConfig",
    "check_train_config",
    "load_train_config",
    "read_yaml_config",
    "recipe_fields",
]


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on (saved, resolved, beside its outputs).

    Sections are her2st ids (with ``her2st`` set) or paths of ``.h5ad`` files in the
    scanpy/squidpy layout whose ``uns["spatial"]`` names the full-resolution image.

    Frozen: a setting is changed by deriving a new configuration
    (``dataclasses.replace(cfg, steps=3)``), never by writing into one that is passed
    around (training, the evaluation's folds and the CLI each derive their own).
    """

    train_sections: list[str] = field(default_factory=lambda: ["B4", "C3", "C4", "C5", "C6"])
    bank_sections: list[str] = field(default_factory=list)
    marker_sections: list[str] = field(default_factory=list)
    her2st: str | None = "../shared/data/her2st"
    benchmark_genes: str | None = "../shared/data/genelists/her_hvg_cut_1000.npy"
    genes: list[str] = field(default_factory=list)
    n_markers: int = 8
    model: ModelConfig = field(default_factory=ModelConfig)
    io: IOContract = field(default_factory=IOContract)
    epochs: int = 30
    #: Total optimizer steps; when set it replaces ``epochs``, so that folds with few
    #: training spots get as much training as folds with many (an epoch of 283 spots is
    #: 4 steps, of 1,000 spots 15).
    steps: int | None = None
    batch_size: int = 64
    lr: float = 1e-4
    lr_min: float = 1e-5
    weight_decay: float = 1e-3
    hed_sigma: float = 0.05
    #: Resolution robustness (`napari_stpredict.training.augment.coarse_scan`): the share of
    #: training patches shown as if scanned coarser, down to ``coarse_max_ratio`` times the
    #: model's input µm per pixel (3.2 = a Visium "hires" image for a 1 µm/px model).
    coarse_scan: float = 0.0
    coarse_max_ratio: float = 3.2
    seed: int = 0
    device: str = "auto"
    #: Retrieval neighbours and spatial context (µm, 0 = none) the model is calibrated,
    #: evaluated and shipped with (`RetrievalSettings`); they do not change training.
    top_k: int = 50
    context_sigma_um: float = 0.0
    #: Per-slide adaptation of the image features (`napari_stpredict.model.adaptation`):
    #: "none", "centre" or "standardise"; a test-time setting like the two above.
    adaptation: str = "none"
    #: What the expression encoder learns from: "log1p" (log1p CP10k, the paper) or
    #: "section_z" (each gene standardised within its section: free of library size and
    #: batch scale, e.g. B4's 648 median counts against patient C's 8.5-12.4 k). Retrieval
    #: still returns the reference spots' log1p CP10k.
    expression_targets: str = "log1p"
    #: Start the image encoder from an ``encoder.pt`` of `stpredict pretrain` (self-supervised
    #: on unlabelled H&E) instead of random weights; its SHA-1 is part of the recipe.
    init_encoder: str | None = None
    out_dir: str = "runs/train"
    cache_dir: str = "runs/cache"
    half: bool = True
    max_bank: int = 6000

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["model"] = to_dict(self.model)
        out["io"] = to_dict(self.io)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        data = dict(data)
        model = from_dict(ModelConfig, data.pop("model", {}) or {})
        io = from_dict(IOContract, data.pop("io", {}) or {})
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown training config keys: {', '.join(unknown)}")
        return cls(model=model, io=io, **data)


def load_train_config(path: str | Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read a YAML training config (missing keys take defaults; unknown keys are errors)."""

    path = Path(path)
    data = read_yaml_config(path)
    data.update(overrides or {})
    try:
        cfg = TrainConfig.from_dict(data)
        check_train_config(cfg)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from exc
    return cfg


def read_yaml_config(path: Path) -> dict[str, Any]:
    """A YAML config file as a dict; every problem one line naming the file (and, for a
    syntax error, the line and column)."""
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ValueError(f"{path}: config file not found") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read the config ({exc})") from exc
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ValueError(f"{path}: not valid YAML{where}: {problem}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a config is a mapping of keys to values, got {type(data).__name__}")
    return data


def check_whole_numbers(cfg, keys, *, optional: bool = False) -> None:
    """Refuse any of ``keys`` of ``cfg`` that is not a whole number of at least 1 (None
    allowed when ``optional``), naming the key."""
    for key in keys:
        value = getattr(cfg, key)
        if optional and value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{key} must be a whole number of at least 1, got {value!r}")


def check_positive_numbers(cfg, keys) -> None:
    """Refuse any of ``keys`` of ``cfg`` that is not a finite number above 0, naming the key."""
    for key in keys:
        value = getattr(cfg, key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
            raise ValueError(f"{key} must be a positive number, got {value!r}")


def check_train_config(cfg: TrainConfig) -> None:
    """Refuse, before any slow work, settings training cannot use, naming the key.

    Raises
    ------
    ValueError
        ``train_sections`` empty or not a list of names; a her2st section id that the
        her2st folder does not hold (or no folder for it); an ``.h5ad`` section that does
        not exist or has no spots; a non-positive length, batch size or learning rate;
        retrieval settings (top-k, context, adaptation) or targets it does not know.
    """
    from ..model.adaptation import ADAPTATION_MODES

    for key in ("train_sections", "bank_sections", "marker_sections"):
        value = getattr(cfg, key)
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise ValueError(f"{key} must be a list of section names or .h5ad paths, got {value!r}")
    if not cfg.train_sections:
        raise ValueError("train_sections is empty: name at least one section to train on")
    for key in ("train_sections", "bank_sections", "marker_sections"):
        for spec in getattr(cfg, key):
            _check_section(spec, cfg.her2st, key)
    check_whole_numbers(cfg, ("steps", "epochs", "batch_size"), optional=True)
    check_positive_numbers(cfg, ("lr", "lr_min"))
    if isinstance(cfg.top_k, bool) or not isinstance(cfg.top_k, int) or cfg.top_k < 1:
        raise ValueError(f"top_k must be a positive integer, got {cfg.top_k!r}")
    sigma = cfg.context_sigma_um
    if isinstance(sigma, bool) or not (isinstance(sigma, (int, float)) and math.isfinite(sigma)) or sigma < 0:
        raise ValueError(f"context_sigma_um must be 0 (no context) or a positive number of µm, got {sigma!r}")
    if cfg.adaptation not in ADAPTATION_MODES:
        raise ValueError(f"adaptation must be one of {', '.join(ADAPTATION_MODES)}, got {cfg.adaptation!r}")
    if cfg.init_encoder is not None and not Path(cfg.init_encoder).is_file():
        raise ValueError(f"init_encoder: {cfg.init_encoder}: no such file (write one with stpredict pretrain)")
    if cfg.expression_targets not in EXPRESSION_TARGETS:
        raise ValueError(
            f"expression_targets must be one of {', '.join(EXPRESSION_TARGETS)}, got {cfg.expression_targets!r}"
        )
    share = cfg.coarse_scan
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share <= 1:
        raise ValueError(f"coarse_scan must be a share of the patches between 0 and 1, got {share!r}")
    ratio = cfg.coarse_max_ratio
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not (math.isfinite(ratio) and ratio >= 1):
        raise ValueError(f"coarse_max_ratio must be a number of at least 1 (1 = native), got {ratio!r}")


EXPRESSION_TARGETS = ("log1p", "section_z")


def _check_section(spec: str, her2st: str | None, key: str) -> None:
    if spec.endswith(".h5ad"):
        path = Path(spec)
        if not path.is_file():
            raise ValueError(f"{key}: {spec}: no such .h5ad file")
        import anndata as ad

        try:
            n_spots = ad.read_h5ad(path, backed="r").n_obs
        except Exception as exc:  # noqa: BLE001 - h5py and anndata raise many kinds for a bad file
            raise ValueError(f"{key}: {spec}: not a readable .h5ad file ({exc})") from exc
        if n_spots == 0:
            raise ValueError(f"{key}: {spec}: has no spots")
        return
    if her2st is None:
        raise ValueError(f"{key}: {spec!r} looks like a her2st section id, but no her2st folder is set (key her2st)")
    counts = Path(her2st) / "ST-cnts" / f"{spec}.tsv.gz"
    if not counts.is_file():
        known = sorted(p.name.split(".")[0] for p in (Path(her2st) / "ST-cnts").glob("*.tsv.gz"))
        hint = f" (it has {', '.join(known[:12])}{'...' if len(known) > 12 else ''})" if known else ""
        raise ValueError(f"{key}: her2st section {spec!r} is not in {her2st}{hint}")


#: Settings applied after training (retrieval, calibration): a change reuses the trained
#: weights of a run folder instead of training again.
TEST_TIME_FIELDS = ("top_k", "context_sigma_um", "adaptation")


def recipe_fields(cfg: TrainConfig) -> dict[str, Any]:
    """The configuration as a dict without what does not change the model or its
    predictions (output and cache folders, device): what result fingerprints compare."""
    relevant = cfg.to_dict()
    for k in ("out_dir", "cache_dir", "device"):
        relevant.pop(k, None)
    # Added after results were committed: their defaults leave those fingerprints as they were.
    for key, default in (
        ("adaptation", "none"),
        ("expression_targets", "log1p"),
        ("coarse_scan", 0.0),
        ("coarse_max_ratio", 3.2),
        ("init_encoder", None),
    ):
        if relevant.get(key) == default:
            relevant.pop(key)
    if "init_encoder" in relevant and Path(relevant["init_encoder"]).is_file():
        from ..io.fingerprint import file_sha1

        # The weights, not where they lie: a moved encoder is the same recipe, a retrained one is not.
        relevant["init_encoder"] = file_sha1(Path(relevant["init_encoder"]))
    return relevant
