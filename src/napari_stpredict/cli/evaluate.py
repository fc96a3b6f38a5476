"""``stpredict evaluate``: the evaluation protocol with its baselines."""

from __future__ import annotations

import sys
from pathlib import Path

from ._common import drain_with_bar

__all__ = ["add", "run"]


def add(sub) -> None:
    """Add the command's parser to ``sub``."""
    p = sub.add_parser("evaluate", help="evaluation protocol with baselines; writes JSON and a Markdown table")
    p.add_argument("--config", type=Path, default=Path("evaluation/config.yaml"))
    p.add_argument("--protocol", nargs="*", default=None, help="patient, loso_C (default: both)")
    p.add_argument("--fold", nargs="*", default=None, help="e.g. test_B test_C3 (default: all)")
    p.add_argument(
        "--variant", nargs="*", default=None, help="cmrcnet contrastive ridge_features untrained (default: all)"
    )
    p.add_argument(
        "--quick", action="store_true", help="fewer training steps (quick_steps): the table within an hour on a CPU"
    )
    p.add_argument(
        "--seed",
        type=int,
        default=None,
        help="train every fold with this seed instead of the config's; results go to "
        "<out_dir>/seeds/seed<N>, runs to <run_dir>/seed<N> (claims need 3 seeds)",
    )
    p.add_argument("--device", default=None)
    p.set_defaults(func=run)


def run(args) -> int:
    """Run the command; returns its exit status."""
    from ..training.evaluate import EvalConfig, iter_evaluate
    from ..training.report import write_report

    try:
        cfg = EvalConfig.from_yaml(args.config)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        message = str(exc)  # names the file already, unless Python's own error
        print(f"error: {message if str(args.config) in message else f'{args.config}: {message}'}", file=sys.stderr)
        return 2
    cfg = cfg.overridden(device=args.device, seed=args.seed)

    def describe(p):
        where = f"{p.get('protocol')}/{p.get('fold')}/{p.get('variant', '')}"
        if p.get("stage") == "train":
            return f"{where} step {p['global_step']}/{p['total_steps']} loss {p['loss']:.3f}"
        return f"{where} {p.get('stage')}"

    try:
        drain_with_bar(
            iter_evaluate(cfg, protocols=args.protocol, folds=args.fold, variants=args.variant, quick=args.quick),
            describe,
        )
    except (ValueError, FileNotFoundError) as exc:  # e.g. results of another recipe in the way
        print(f"error: {exc}", file=sys.stderr)
        return 2
    results, tables = write_report(cfg.out_dir, quick=args.quick)
    for table in tables:
        print(table)
    print(f"results: {results}")
    return 0
