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
from dataclasses import replace
from pathlib import Path

import numpy as np

from .config import (  # noqa: F401 - TrainConfig and load_train_config are this module's public names since 0.1.0
    EXPRESSION_TARGETS,
    TEST_TIME_FIELDS,
    TrainConfig,
    check_train_config,
    load_train_config,
    read_yaml_config,
    recipe_fields,
)

__all__ = ["TrainConfig", "iter_train", "train", "load_train_config", "training_length"]


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


def _seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def _config_hash(cfg: TrainConfig) -> str:
    """Fingerprint of what training depends on: a run folder resumes (or, finished, only
    redoes bank and calibration) when it matches."""
    training = {k: v for k, v in recipe_fields(cfg).items() if k not in TEST_TIME_FIELDS}
    return hashlib.sha1(json.dumps(training, sort_keys=True).encode()).hexdigest()[:16]


def resolve_genes(cfg: TrainConfig) -> tuple[list[str], dict]:
    """The model's gene list: explicit ``genes``, or benchmark genes + HER2 amplicon + a marker
    panel chosen on the training (and bank/marker) sections only."""
    from .genes import benchmark_genes, model_gene_list, select_counter_panel, select_marker_panel
    from .sections import Section

    label_specs = list(dict.fromkeys(cfg.train_sections + cfg.bank_sections + cfg.marker_sections))
    sections = [Section(s, cfg.her2st) for s in label_specs]  # each read once, for genes and markers
    available = set.intersection(*(set(section.adata.var_names) for section in sections)) if sections else set()
    if cfg.genes:
        missing = [g for g in cfg.genes if g not in available]
        if missing:
            raise ValueError(f"genes not in every training section: {missing[:10]} ({len(missing)} in all)")
        return list(cfg.genes), {"panel": [], "why": "genes given in the config"}
    if cfg.benchmark_genes is None:
        raise ValueError("set either genes or benchmark_genes in the training config")
    candidates = sorted(available)
    adatas = [section.adata for section in sections]
    markers = select_marker_panel(adatas, candidates, n_markers=cfg.n_markers)
    genes = model_gene_list(benchmark_genes(cfg.benchmark_genes), markers["panel"], available)
    # The genes most depleted in cancer: the evaluation's contrast tumour score (issue 19, item 4);
    # recorded with the marker panel, not used by prediction.
    markers["counter_panel"] = select_counter_panel(adatas, genes, n_genes=cfg.n_markers)["panel"]
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
    # The resolved configuration is this run's own; the caller's is left as it was.
    cfg = replace(
        cfg,
        io=replace(cfg.io, genes=genes),
        model=replace(cfg.model, n_genes=len(genes), img_size=cfg.io.input_px),
    )
    cache = Path(cfg.cache_dir)
    train = SpotSet.concat(
        [
            section_spots(s, cfg.her2st, genes, patch_um=cfg.io.patch_um, input_px=cfg.io.input_px, cache_dir=cache)
            for s in cfg.train_sections
        ]
    )
    (run_dir / "config.yaml").write_text(_yaml(cfg.to_dict() | {"resolved": {"markers": markers}}), encoding="utf-8")

    model = create_model(cfg.model)
    if cfg.init_encoder:  # self-supervised weights from stpredict pretrain (a resumed state overrides them)
        from .pretrain import load_encoder

        load_encoder(cfg.init_encoder, model.backbone, cfg.model.backbone)
    model = model.to(device)
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
        "init_encoder": recipe_fields(cfg).get("init_encoder"),  # SHA-1 of the pretrained encoder, if any
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
