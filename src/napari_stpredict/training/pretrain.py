"""`stpredict pretrain`: self-supervised pretraining of the image encoder on unlabelled H&E.

SimCLR (Chen et al. 2020) on tissue tiles of every H&E image a configuration names (her2st
sections by id, other slides by path), before the contrastive training with expression:
two augmented views of each tile (dihedral flips, stain jitter, the coarse-scan blur of
`napari_stpredict.training.augment`) are pulled together and pushed from the batch's
other tiles (NT-Xent). The backbone learns stain- and scanner-robust tissue features from
images that have no spots, which the paired training (a few thousand spots) cannot give it.

A fold of the evaluation must not see its held-out sections: ``exclude`` names them, and
their images are never tiled (the tile manifest beside the encoder records what was).

Long work is a generator (`iter_pretrain`) yielding progress and returning the path of
``encoder.pt``: the backbone's weights (a plain state dict, read with ``weights_only``),
which `TrainConfig.init_encoder` starts a training from. Resumable: a state file every
``checkpoint_every`` steps; ``max_seconds`` ends a session's share cleanly (rerun to go on).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "PretrainConfig",
    "check_pretrain_config",
    "iter_pretrain",
    "load_encoder",
    "load_pretrain_config",
    "nt_xent",
]


@dataclass(frozen=True)
class PretrainConfig:
    """Settings of one pretraining run (frozen; derive others with ``dataclasses.replace``).

    ``images`` are her2st section ids (their full-resolution H&E, read from ``her2st``) or
    paths of slides or images; an image without a recorded resolution is given as
    ``PATH@MPP`` (e.g. ``A1_HE_image_dark.png@3.2``).
    """

    images: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    her2st: str | None = "../shared/data/her2st"
    tiles_per_image: int = 1500
    patch_um: float = 112.0
    input_px: int = 112
    backbone: str = "resnet10t"
    projection_dim: int = 128
    steps: int = 1000
    batch_size: int = 64
    lr: float = 3e-4
    weight_decay: float = 1e-4
    temperature: float = 0.2
    hed_sigma: float = 0.1
    coarse_scan: float = 0.5
    coarse_max_ratio: float = 3.2
    checkpoint_every: int = 50
    max_seconds: float | None = None
    seed: int = 0
    device: str = "auto"
    out_dir: str = "runs/pretrain"
    cache_dir: str = "runs/cache"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_pretrain_config(path: str | Path, overrides: dict[str, Any] | None = None) -> PretrainConfig:
    """Read a YAML pretraining config; every problem one line naming the file and key."""
    from .config import read_yaml_config

    path = Path(path)
    data = {**read_yaml_config(path), **(overrides or {})}
    unknown = sorted(set(data) - set(PretrainConfig.__dataclass_fields__))
    if unknown:
        raise ValueError(f"{path}: unknown pretraining config keys: {', '.join(unknown)}")
    try:
        cfg = PretrainConfig(**data)
        check_pretrain_config(cfg)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from exc
    return cfg


def check_pretrain_config(cfg: PretrainConfig) -> None:
    """Refuse settings that cannot run, naming the key, before any image is read."""
    images = [spec for spec in cfg.images if spec not in set(cfg.exclude)]
    if not images:
        raise ValueError("images: no image left to pretrain on (all excluded, or none listed)")
    from .config import check_positive_numbers, check_whole_numbers

    check_whole_numbers(
        cfg, ("tiles_per_image", "steps", "batch_size", "checkpoint_every", "input_px", "projection_dim")
    )
    if cfg.batch_size < 2:
        raise ValueError(
            f"batch_size must be at least 2 (each tile is contrasted with the others), got {cfg.batch_size}"
        )
    check_positive_numbers(cfg, ("lr", "temperature", "patch_um"))  # infinite values refused too
    if not 0 <= cfg.coarse_scan <= 1:
        raise ValueError(f"coarse_scan must be a share between 0 and 1, got {cfg.coarse_scan!r}")
    if cfg.max_seconds is not None and not cfg.max_seconds > 0:
        raise ValueError(f"max_seconds must be a positive number of seconds, got {cfg.max_seconds!r}")
    for spec in images:
        _image_source(spec, cfg.her2st)  # names the image that cannot be found


def nt_xent(z1, z2, temperature: float):
    """SimCLR's NT-Xent loss of two views' projections ``(B, d)``: each view's positive is
    the other view of its tile, its negatives every other view in the batch."""
    import torch
    import torch.nn.functional as F

    z = F.normalize(torch.cat([z1, z2]), dim=1)
    logits = z @ z.T / temperature
    n = z1.shape[0]
    logits.fill_diagonal_(float("-inf"))  # a view is not its own positive
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, target)


def _image_source(spec: str, her2st: str | None) -> tuple[Path, float | None]:
    """``(file, mpp or None)`` of one ``images`` entry."""
    path_text, _, mpp_text = spec.partition("@")
    mpp = float(mpp_text) if mpp_text else None
    if Path(path_text).suffix:  # a file
        path = Path(path_text)
        if not path.is_file():
            raise ValueError(f"images: {path}: file not found")
        return path, mpp
    if her2st is None:
        raise ValueError(f"images: {spec!r} looks like a her2st section id, but no her2st folder is set")
    from ..io.st_data import HER2ST_MPP, STDataError, her2st_image

    try:
        return her2st_image(her2st, spec), mpp or HER2ST_MPP
    except STDataError as exc:
        raise ValueError(f"images: {exc}") from exc


def _tiles(spec: str, cfg: PretrainConfig) -> np.ndarray:
    """Up to ``tiles_per_image`` tissue tiles ``(n, px, px, 3)`` uint8 of one image, cached."""
    from ..io.atomic import write_npy
    from ..io.fingerprint import file_sha1
    from ..io.patches import read_patches
    from ..io.slide import open_slide
    from ..tiling import spot_grid
    from ..tissue import slide_tissue_mask

    path, mpp = _image_source(spec, cfg.her2st)
    key = json.dumps([file_sha1(path), mpp, cfg.tiles_per_image, cfg.patch_um, cfg.input_px, cfg.seed])
    cache = Path(cfg.cache_dir) / "pretrain_tiles" / f"{hashlib.sha1(key.encode()).hexdigest()[:16]}.npy"
    if cache.is_file():
        try:
            return np.load(cache, allow_pickle=False)
        except (OSError, ValueError):
            pass  # a damaged entry: tiled again below
    with open_slide(path, mpp=mpp) as slide:
        tissue = slide_tissue_mask(slide, require_tissue=False)
        grid = spot_grid(tissue.mask, tissue.l0_per_th, slide.mpp, patch_um=cfg.patch_um, slide_name=slide.name)
        rng = np.random.default_rng(cfg.seed)
        pick = np.sort(rng.choice(len(grid), min(len(grid), cfg.tiles_per_image), replace=False))
        tiles = read_patches(slide, grid.l0_centres[pick], cfg.patch_um, cfg.input_px)
    cache.parent.mkdir(parents=True, exist_ok=True)
    write_npy(cache, tiles)
    return tiles


def _simclr_net(cfg: PretrainConfig):
    """The backbone CMRCNet uses, with a throwaway projection head for the SSL loss."""
    from torch import nn

    from ..model.cmrcnet import _create_backbone
    from ..model.config import ModelConfig

    backbone = _create_backbone(ModelConfig(backbone=cfg.backbone, img_size=cfg.input_px))
    feat = int(backbone.num_features)  # type: ignore[arg-type]
    head = nn.Sequential(nn.Linear(feat, feat), nn.ReLU(), nn.Linear(feat, cfg.projection_dim))
    return nn.ModuleDict({"backbone": backbone, "head": head})


def _embed(net, x):
    features = net["backbone"](x)
    if features.ndim == 4:
        features = features.mean(dim=(2, 3))
    elif features.ndim == 3:
        features = features.mean(dim=1)
    return net["head"](features)


def iter_pretrain(cfg: PretrainConfig, run_dir: str | Path | None = None) -> Iterator[dict]:
    """Pretrain, yielding progress dicts; returns the path of ``encoder.pt``.

    Yields ``{"stage": "tiles" | "resume" | "train" | "paused" | "done", ...}``; ``train``
    events carry ``global_step``, ``total_steps`` and ``loss``. A run folder resumes when
    its configuration (outputs, device and time budget aside) is the same.
    """
    import torch

    from ..io.atomic import atomic_path
    from ..model import select_device
    from ..model.config import IOContract
    from .augment import augment_batch, coarse_scan

    check_pretrain_config(cfg)
    run_dir = Path(run_dir or cfg.out_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    device = select_device(cfg.device)
    images = [spec for spec in cfg.images if spec not in set(cfg.exclude)]
    tiles, manifest = [], []
    for i, spec in enumerate(images):
        yield {"stage": "tiles", "done": i, "total": len(images), "message": f"tiling {Path(spec).name}"}
        t = _tiles(spec, cfg)
        tiles.append(t)
        manifest.append({"image": spec, "tiles": len(t)})
    data = torch.from_numpy(np.concatenate(tiles))
    recipe = {k: v for k, v in cfg.to_dict().items() if k not in ("out_dir", "cache_dir", "device", "max_seconds")}
    recipe_hash = hashlib.sha1(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]
    net = _simclr_net(cfg).to(device)
    optimizer = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.steps, eta_min=cfg.lr / 10)
    state_path, step, history = run_dir / "state.pt", 0, []
    if state_path.exists():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        if state.get("recipe") == recipe_hash:
            net.load_state_dict(state["net"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            step, history = int(state["step"]), list(json.loads(state["history"]))
            yield {"stage": "resume", "global_step": step}

    def save_state() -> None:
        with atomic_path(state_path) as tmp:
            torch.save(
                {
                    "recipe": recipe_hash,
                    "step": step,
                    "net": net.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "history": json.dumps(history),
                },
                tmp,
            )

    io = IOContract()
    mean = torch.tensor(io.mean).view(1, 3, 1, 1)
    std = torch.tensor(io.std).view(1, 3, 1, 1)
    started = time.monotonic()
    net.train()
    while step < cfg.steps:
        if cfg.max_seconds is not None and time.monotonic() - started > cfg.max_seconds:
            save_state()
            yield {"stage": "paused", "global_step": step, "message": f"paused at step {step}: rerun to go on"}
            return None
        gen = torch.Generator().manual_seed(cfg.seed * 100_003 + step)  # the same batches after a resume
        idx = torch.randint(0, len(data), (cfg.batch_size,), generator=gen)
        x = data[idx].permute(0, 3, 1, 2).float().div(255.0)
        views = []
        for _ in range(2):
            v = augment_batch(x, hed_sigma=cfg.hed_sigma, brightness=0.1, generator=gen)
            v = coarse_scan(v, cfg.coarse_scan, cfg.coarse_max_ratio, generator=gen)
            views.append(((v - mean) / std).to(device))
        loss = nt_xent(_embed(net, views[0]), _embed(net, views[1]), cfg.temperature)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        step += 1
        history.append({"step": step, "loss": round(float(loss.item()), 4)})
        if step % cfg.checkpoint_every == 0:
            save_state()  # before the step is reported: a run stopped at its report keeps it
        yield {"stage": "train", "global_step": step, "total_steps": cfg.steps, "loss": float(loss.item())}
    save_state()
    encoder = run_dir / "encoder.pt"
    with atomic_path(encoder) as tmp:
        torch.save(
            {
                "format": 1,
                "backbone": cfg.backbone,
                "input_px": cfg.input_px,
                "patch_um": cfg.patch_um,
                "state_dict": net["backbone"].state_dict(),
            },
            tmp,
        )
    summary = {
        "images": manifest,
        "excluded": list(cfg.exclude),
        "steps": step,
        "seconds_this_session": round(time.monotonic() - started, 1),
        "loss_first_50": float(np.mean([h["loss"] for h in history[:50]])) if history else None,
        "loss_last_50": float(np.mean([h["loss"] for h in history[-50:]])) if history else None,
        "config": cfg.to_dict(),
    }
    with atomic_path(run_dir / "pretrain.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=1), encoding="utf-8")
    yield {"stage": "done", "path": str(encoder)}
    return encoder


def load_encoder(path: str | Path, backbone_module, backbone: str) -> None:
    """Load ``encoder.pt`` into a CMRCNet's backbone (same architecture, strict).

    Raises
    ------
    ValueError
        Naming the file: unreadable, another backbone, or weights that do not fit.
    """
    import torch

    path = Path(path)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError) as exc:
        raise ValueError(f"init_encoder {path}: not a readable encoder file ({exc})") from exc
    if not isinstance(data, dict) or data.get("format") != 1 or "state_dict" not in data:
        raise ValueError(f"init_encoder {path}: not an encoder written by stpredict pretrain")
    if data.get("backbone") != backbone:
        raise ValueError(f"init_encoder {path}: pretrained for backbone {data.get('backbone')!r}, not {backbone!r}")
    try:
        backbone_module.load_state_dict(data["state_dict"], strict=True)
    except RuntimeError as exc:
        raise ValueError(f"init_encoder {path}: the weights do not fit the backbone ({exc})") from exc
