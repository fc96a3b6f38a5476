"""``stpredict train``: train a model, rebuild its bank or calibrate it."""

from __future__ import annotations

import sys
from pathlib import Path

from ..errors import StPredictError
from ._common import drain_with_bar

__all__ = ["add", "run"]


def add(sub) -> None:
    """Add the command's parser to ``sub``."""
    p = sub.add_parser("train", help="train a CMRCNet model (resumable)")
    p.add_argument("--config", type=Path, required=True, help="training YAML (see configs/)")
    p.add_argument("--out", type=Path, default=None, help="run folder (default: out_dir of the config)")
    p.add_argument("--epochs", type=int, default=None, help="override the number of epochs")
    p.add_argument(
        "--steps", type=int, default=None, help="override the training length in optimizer steps (replaces epochs)"
    )
    p.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:1, mps")
    p.add_argument(
        "--rebuild-bank",
        type=Path,
        default=None,
        metavar="CHECKPOINT",
        help="do not train: write CHECKPOINT with its bank rebuilt from the config's training and "
        "bank_sections (to --out, default: CHECKPOINT with suffix .bank.pt)",
    )
    p.add_argument(
        "--calibrate",
        type=Path,
        default=None,
        metavar="CHECKPOINT",
        help="do not train: write CHECKPOINT with its trust calibration (out-of-domain score, tumour "
        "threshold) computed from its training sections, bank unchanged (to --out, default: "
        "CHECKPOINT with suffix .calibrated.pt); for checkpoints made before calibration existed",
    )
    p.set_defaults(func=run)


def _train_overrides(args) -> dict:
    """Config values given on the command line; ``--epochs`` alone clears a step budget."""
    given = {"epochs": args.epochs, "steps": args.steps, "device": args.device}
    overrides = {k: v for k, v in given.items() if v is not None}
    if args.epochs is not None and args.steps is None:
        overrides["steps"] = None  # otherwise a config's steps would silently win over --epochs
    return overrides


def run(args) -> int:
    """Run the command; returns its exit status."""
    from ..training.config import load_train_config
    from ..training.train import iter_train

    overrides = _train_overrides(args)
    try:
        cfg = load_train_config(args.config, overrides)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.calibrate is not None:
        from ..training.calibration import calibrate_checkpoint

        out = args.out or args.calibrate.with_suffix(".calibrated.pt")
        try:
            path = calibrate_checkpoint(args.calibrate, out, her2st=cfg.her2st, cache_dir=cfg.cache_dir)
        except (StPredictError, ValueError, FileNotFoundError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"calibrated checkpoint: {path}")
        return 0
    if args.rebuild_bank is not None:
        from ..training.bank import rebuild_bank

        out = args.out or args.rebuild_bank.with_suffix(".bank.pt")
        path = rebuild_bank(
            args.rebuild_bank,
            out,
            bank_sections=cfg.bank_sections,
            her2st=cfg.her2st,
            max_bank=cfg.max_bank,
            seed=cfg.seed,
            cache_dir=cfg.cache_dir,
        )
        print(f"checkpoint with rebuilt bank: {path}")
        return 0
    run_dir = args.out or Path(cfg.out_dir)

    def describe(p):
        if p["stage"] == "train":
            return f"step {p['global_step']}/{p['total_steps']} loss {p['loss']:.3f}"
        return p.get("message") or p["stage"]

    try:
        path = drain_with_bar(iter_train(cfg, run_dir), describe)
    except (StPredictError, ValueError) as exc:  # data the checks could not see (labels, genes)
        print(f"error: {args.config}: {exc}", file=sys.stderr)
        return 2
    print(f"checkpoint: {path}")
    return 0
