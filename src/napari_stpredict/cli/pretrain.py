"""``stpredict pretrain``: self-supervised pretraining of the image encoder (resumable)."""

from __future__ import annotations

import sys
from pathlib import Path

from ..errors import StPredictError
from ._common import drain_with_bar

__all__ = ["add", "run"]


def add(sub) -> None:
    """Add the command's parser to ``sub``."""
    p = sub.add_parser(
        "pretrain",
        help="pretrain the image encoder on unlabelled H&E (SimCLR; resumable); train with init_encoder",
        description="Self-supervised pretraining of the image encoder on tissue tiles of unlabelled H&E "
        "images (her2st section ids or slide files; PATH@MPP for an image without a recorded "
        "resolution). Writes encoder.pt and pretrain.json in the run folder; a training config's "
        "init_encoder starts from it. Research use only.",
    )
    p.add_argument("--config", type=Path, required=True, help="pretraining YAML (see configs/pretrain_*.yaml)")
    p.add_argument("--out", type=Path, default=None, help="run folder (default: out_dir of the config)")
    p.add_argument("--steps", type=int, default=None, help="override the number of optimizer steps")
    p.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help="stop cleanly after this long (state saved; the same command goes on from there)",
    )
    p.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:1, mps")
    p.set_defaults(func=run)


def run(args) -> int:
    """Run the command; returns its exit status."""
    from ..training.pretrain import iter_pretrain, load_pretrain_config

    given = {"steps": args.steps, "device": args.device}
    overrides = {k: v for k, v in given.items() if v is not None}
    if args.max_minutes is not None:
        overrides["max_seconds"] = args.max_minutes * 60
    try:
        cfg = load_pretrain_config(args.config, overrides)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    def describe(p):
        if p["stage"] == "train":
            return f"step {p['global_step']}/{p['total_steps']} loss {p['loss']:.3f}"
        return p.get("message") or p["stage"]

    try:
        path = drain_with_bar(iter_pretrain(cfg, args.out), describe)
    except (StPredictError, ValueError, OSError) as exc:
        print(f"error: {args.config}: {exc}", file=sys.stderr)
        return 2
    if path is None:
        print(f"paused: run the same command again to go on ({args.out or cfg.out_dir})")
        return 0
    print(f"encoder: {path}")
    return 0
