"""`stpredict train`: train a CMRCNet on ST sections, resumably, and write one checkpoint.

Long work is a generator (`iter_train`) that yields progress dicts and returns the
checkpoint path; the CLI shows it with a progress bar, tests drain it.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..model.config import IOContract, ModelConfig, from_dict, to_dict

__all__ = ["TrainConfig", "iter_train", "train", "load_train_config", "training_length"]


@dataclass
class TrainConfig:
    """Everything a training run depends on (saved, resolved, beside its outputs).

    Sections are her2st ids (with ``her2st`` set) or paths of ``.h5ad`` files in the
    scanpy/squidpy layout whose ``uns["spatial"]`` names the full-resolution image.
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
    for key in ("steps", "epochs", "batch_size"):
        value = getattr(cfg, key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{key} must be a whole number of at least 1, got {value!r}")
    for key in ("lr", "lr_min"):
        value = getattr(cfg, key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (np.isfinite(value) and value > 0):
            raise ValueError(f"{key} must be a positive number, got {value!r}")
    if isinstance(cfg.top_k, bool) or not isinstance(cfg.top_k, int) or cfg.top_k < 1:
        raise ValueError(f"top_k must be a positive integer, got {cfg.top_k!r}")
    sigma = cfg.context_sigma_um
    if isinstance(sigma, bool) or not (isinstance(sigma, (int, float)) and np.isfinite(sigma)) or sigma < 0:
        raise ValueError(f"context_sigma_um must be 0 (no context) or a positive number of µm, got {sigma!r}")
    if cfg.adaptation not in ADAPTATION_MODES:
        raise ValueError(f"adaptation must be one of {', '.join(ADAPTATION_MODES)}, got {cfg.adaptation!r}")
    if cfg.expression_targets not in EXPRESSION_TARGETS:
        raise ValueError(
            f"expression_targets must be one of {', '.join(EXPRESSION_TARGETS)}, got {cfg.expression_targets!r}"
        )
    share = cfg.coarse_scan
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share <= 1:
        raise ValueError(f"coarse_scan must be a share of the patches between 0 and 1, got {share!r}")
    ratio = cfg.coarse_max_ratio
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not (np.isfinite(ratio) and ratio >= 1):
        raise ValueError(f"coarse_max_ratio must be a number of at least 1 (1 = native), got {ratio!r}")


EXPRESSION_TARGETS = ("log1p", "section_z")


def encoder_input(spots, targets: str) -> np.ndarray:
    """What the expression encoder sees of ``spots`` (`TrainConfig.expression_targets`):
    their log1p CP10k, or each gene standardised within each section."""
    if targets == "log1p":
        return spots.expression
    if targets != "section_z":
        raise ValueError(f"expression_targets must be one of {', '.join(EXPRESSION_TARGETS)}, got {targets!r}")
    out = np.empty_like(spots.expression, dtype=np.float32)
    sections = np.asarray(spots.section)
    for section in dict.fromkeys(sections.tolist()):
        rows = sections == section
        x = spots.expression[rows].astype(np.float64)
        sd = x.std(0)
        out[rows] = np.where(sd > 1e-6, (x - x.mean(0)) / np.where(sd > 1e-6, sd, 1.0), 0.0)
    return out


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


def _seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


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
    ):
        if relevant.get(key) == default:
            relevant.pop(key)
    return relevant


def _config_hash(cfg: TrainConfig) -> str:
    """Fingerprint of what training depends on: a run folder resumes (or, finished, only
    redoes bank and calibration) when it matches."""
    training = {k: v for k, v in recipe_fields(cfg).items() if k not in TEST_TIME_FIELDS}
    return hashlib.sha1(json.dumps(training, sort_keys=True).encode()).hexdigest()[:16]


def resolve_genes(cfg: TrainConfig) -> tuple[list[str], dict]:
    """The model's gene list: explicit ``genes``, or benchmark genes + HER2 amplicon + a marker
    panel chosen on the training (and bank/marker) sections only."""
    from .genes import benchmark_genes, model_gene_list, select_marker_panel
    from .sections import available_genes, load_section

    label_specs = list(dict.fromkeys(cfg.train_sections + cfg.bank_sections + cfg.marker_sections))
    available = available_genes(label_specs, cfg.her2st)
    if cfg.genes:
        missing = [g for g in cfg.genes if g not in available]
        if missing:
            raise ValueError(f"genes not in every training section: {missing[:10]} ({len(missing)} in all)")
        return list(cfg.genes), {"panel": [], "why": "genes given in the config"}
    if cfg.benchmark_genes is None:
        raise ValueError("set either genes or benchmark_genes in the training config")
    candidates = sorted(available)
    adatas = [load_section(s, cfg.her2st) for s in label_specs]
    markers = select_marker_panel(adatas, candidates, n_markers=cfg.n_markers)
    genes = model_gene_list(benchmark_genes(cfg.benchmark_genes), markers["panel"], available)
    return genes, markers


def _batches(n: int, batch_size: int, generator) -> list[np.ndarray]:
    import torch

    order = torch.randperm(n, generator=generator).numpy()
    if n <= batch_size:
        return [order]
    return [order[i : i + batch_size] for i in range(0, n - batch_size + 1, batch_size)]  # drop last


def iter_train(cfg: TrainConfig, run_dir: str | Path | None = None) -> Iterator[dict]:
    """Train; yield progress dicts; return the path of the written checkpoint.

    Resumes from ``run_dir/state.pt`` when it was written by the same configuration.
    """
    import torch

    from ..io.atomic import atomic_path
    from ..model import create_model, fit_ridge, save_checkpoint, select_device
    from .augment import augment_batch, coarse_scan
    from .data import SpotSet
    from .sections import section_spots

    check_train_config(cfg)  # configs built in Python too, not only those read from YAML
    run_dir = Path(run_dir or cfg.out_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    _seed_everything(cfg.seed)
    device = select_device(cfg.device)
    t_start = time.perf_counter()

    yield {"stage": "data", "message": "choosing genes and reading patches"}
    genes, markers = resolve_genes(cfg)
    cfg.io.genes = genes
    cfg.model.n_genes = len(genes)
    cfg.model.img_size = cfg.io.input_px
    cache = Path(cfg.cache_dir)
    train = SpotSet.concat(
        [
            section_spots(s, cfg.her2st, genes, patch_um=cfg.io.patch_um, input_px=cfg.io.input_px, cache_dir=cache)
            for s in cfg.train_sections
        ]
    )
    (run_dir / "config.yaml").write_text(_yaml(cfg.to_dict() | {"resolved": {"markers": markers}}), encoding="utf-8")

    model = create_model(cfg.model).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = len(_batches(len(train), cfg.batch_size, torch.Generator().manual_seed(0)))
    total_steps, n_epochs = training_length(cfg, steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps, eta_min=cfg.lr_min)
    state_path = run_dir / "state.pt"
    start_epoch, history = 0, []
    config_hash = _config_hash(cfg)
    if state_path.exists():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        if state.get("config_hash") == config_hash:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            start_epoch, history = int(state["epoch"]), list(json.loads(state["history"]))
            torch.set_rng_state(state["torch_rng"])
            yield {"stage": "resume", "epoch": start_epoch}

    images_u8 = torch.from_numpy(train.patches)  # (N, H, W, 3)
    expression = torch.from_numpy(encoder_input(train, cfg.expression_targets))
    mean = torch.tensor(cfg.io.mean).view(1, 3, 1, 1)
    std = torch.tensor(cfg.io.std).view(1, 3, 1, 1)
    use_amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    for epoch in range(start_epoch, n_epochs):
        model.train()
        gen = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
        losses = []
        for step, idx in enumerate(_batches(len(train), cfg.batch_size, gen)):
            if epoch * steps_per_epoch + step >= total_steps:  # a step budget may end mid-epoch
                break
            x = images_u8[idx].permute(0, 3, 1, 2).float().div(255.0)
            x = augment_batch(x, hed_sigma=cfg.hed_sigma, generator=gen)
            x = coarse_scan(x, cfg.coarse_scan, cfg.coarse_max_ratio, generator=gen)
            x = ((x - mean) / std).to(device)
            e = expression[idx].to(device)
            with torch.autocast(device_type=device.type, enabled=use_amp):
                out = model(x, e)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(out["loss"]).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            losses.append(out["loss"].item())
            yield {
                "stage": "train",
                "epoch": epoch + 1,
                "epochs": n_epochs,
                "step": step + 1,
                "steps": steps_per_epoch,
                "global_step": epoch * steps_per_epoch + step + 1,
                "total_steps": total_steps,
                "loss": losses[-1],
            }
        history.append({"epoch": epoch + 1, "loss": float(np.mean(losses)), "lr": scheduler.get_last_lr()[0]})
        with atomic_path(state_path) as tmp:
            torch.save(
                {
                    "config_hash": config_hash,
                    "epoch": epoch + 1,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "history": json.dumps(history),
                    "torch_rng": torch.get_rng_state(),
                },
                tmp,
            )

    yield {"stage": "bank", "message": "embedding the reference bank"}
    model.eval()
    bank_sets = [train] + [section_spots(s, cfg.her2st, genes) for s in cfg.bank_sections]
    bank = SpotSet.concat([SpotSet(genes, s.expression, s.section, s.patient, s.tumor, s.xy) for s in bank_sets])
    bank_input = encoder_input(bank, cfg.expression_targets)  # each whole section's statistics
    if len(bank) > cfg.max_bank:  # keep every training spot; subsample the extra sections
        rng = np.random.default_rng(cfg.seed)
        extra = np.arange(len(train), len(bank))
        keep = np.sort(
            np.concatenate([np.arange(len(train)), rng.choice(extra, cfg.max_bank - len(train), replace=False)])
        )
        bank, bank_input = bank.subset(keep), bank_input[keep]
    with torch.inference_mode():
        bank_emb = torch.cat(
            [
                model.encode_expression(torch.from_numpy(bank_input[i : i + 512]).to(device)).cpu()
                for i in range(0, len(bank), 512)
            ]
        )
        train_emb = torch.cat(
            [
                model.encode_image(((images_u8[i : i + 128].permute(0, 3, 1, 2).float() / 255 - mean) / std).to(device))
                .float()
                .cpu()
                for i in range(0, len(train), 128)
            ]
        )
    ridge = fit_ridge(train_emb.numpy(), train.expression)
    confidence_reference = _confidence_reference(train_emb, bank_emb, cfg.top_k)
    provenance = {
        "train_sections": cfg.train_sections,
        "bank_sections": cfg.bank_sections,
        "bank_spots": len(bank),
        "train_spots": len(train),
        "patients": sorted(set(train.patient) | set(bank.patient)),
        "markers": markers,
        "epochs": n_epochs,
        "steps": total_steps,
        "seed": cfg.seed,
        "config_hash": config_hash,
        "history": history,
        "seconds": round(time.perf_counter() - t_start, 1),
        "data": "her2st (Andersson et al. 2021)" if cfg.her2st else "user data",
        "confidence_reference": confidence_reference,
        "expression_targets": cfg.expression_targets,
    }
    yield {"stage": "calibrate", "message": "calibrating the out-of-domain score and the tumour threshold"}
    calibration = _calibrate(model, cfg, bank_emb, bank.expression, ridge, provenance, train)
    path = save_checkpoint(
        run_dir / "model.pt",
        model=model,
        io=cfg.io,
        bank_embeddings=bank_emb,
        bank_expression=torch.from_numpy(bank.expression),
        ridge=ridge,
        provenance=provenance,
        calibration=calibration,
        retrieval=_retrieval(cfg),
        half=cfg.half,
    )
    (run_dir / "history.json").write_text(json.dumps(history, indent=1), encoding="utf-8")
    yield {"stage": "done", "checkpoint": str(path)}
    return path


def training_length(cfg: TrainConfig, steps_per_epoch: int) -> tuple[int, int]:
    """Total optimizer steps and the number of (possibly partial) epochs they span.

    Parameters
    ----------
    cfg : TrainConfig
        ``steps`` when set, else ``epochs`` full passes.
    steps_per_epoch : int
        Batches per pass over the training spots (the last partial batch is dropped).

    Returns
    -------
    tuple of int
        ``(total_steps, epochs)``.
    """
    steps_per_epoch = max(1, steps_per_epoch)
    if cfg.steps is not None:
        if cfg.steps < 1:
            raise ValueError(f"steps must be at least 1, got {cfg.steps}")
        return cfg.steps, -(-cfg.steps // steps_per_epoch)
    if cfg.epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {cfg.epochs}")
    return cfg.epochs * steps_per_epoch, cfg.epochs


def _confidence_reference(train_emb, bank_emb, top_k: int) -> dict[str, float]:
    """How similar training images are to the bank, leaving each spot's own entry out.

    The bank starts with the training spots in order, so spot i's own expression is bank
    entry i. A slide whose spots fall below the 5th percentile is unlike the training data.
    """
    import torch

    q = torch.nn.functional.normalize(train_emb.float(), dim=1)
    b = torch.nn.functional.normalize(bank_emb.float(), dim=1)
    sims = q @ b.T
    n = len(q)
    sims[torch.arange(n), torch.arange(n)] = -float("inf")
    k = max(1, min(top_k, sims.shape[1] - 1))
    mean_topk = torch.topk(sims, k, dim=1).values.mean(1).numpy()
    return {
        "q05": float(np.percentile(mean_topk, 5)),
        "q50": float(np.percentile(mean_topk, 50)),
        "measure": f"mean cosine similarity of the top {k} bank spots, own spot left out",
    }


def _calibrate(network, cfg: TrainConfig, bank_emb, bank_expression, ridge, provenance, train) -> dict:
    """`compute_calibration` on the network just trained, through the same `STModel` that
    prediction uses (so the calibration sees exactly what a slide will)."""
    import torch

    from ..model import ReferenceBank, STModel
    from .calibration import compute_calibration
    from .neighbours import context_embeddings

    model = STModel(
        network,
        cfg.io,
        ReferenceBank(bank_emb, torch.from_numpy(bank_expression)),
        ridge,
        provenance=provenance,
        retrieval=_retrieval(cfg),
        device=next(network.parameters()).device,
    )
    if cfg.adaptation != "none":
        from ..model.adaptation import FeatureStats

        # The adaptation's target, as the checkpoint will derive it from its reference
        # features (these training images) once loaded.
        model.training_feature_stats = FeatureStats.of(model.features_many(train.patches))
    context = context_embeddings(model, train, cfg.train_sections, cfg.her2st, cache_dir=Path(cfg.cache_dir))
    return compute_calibration(model, train, neighbours=context)


def _retrieval(cfg: TrainConfig):
    from ..model import RetrievalSettings

    return RetrievalSettings(
        top_k=int(cfg.top_k), context_sigma_um=float(cfg.context_sigma_um), adaptation=str(cfg.adaptation)
    )


def train(cfg: TrainConfig, run_dir: str | Path | None = None) -> Path:
    """Run `iter_train` to the end and return the checkpoint path."""
    from .._progress import drain

    return drain(iter_train(cfg, run_dir))


def _yaml(data: dict) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False)
