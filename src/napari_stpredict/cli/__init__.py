"""Command-line interface: ``stpredict <command>``, one module per command.

Commands
--------
predict
    Predict expression over slides: .h5ad table, GeoTIFF per gene, tumour mask
    (GeoTIFF + GeoJSON), PNG overview and the resolved config.
info
    Open slides (or the bundled sample), write a JSON summary and a thumbnail PNG with
    the detected tissue outlined.
convert
    her2st sections or a Space Ranger folder -> one ``.h5ad`` per section.
pretrain
    Self-supervised pretraining of the image encoder on unlabelled H&E; resumable.
train
    Train a CMRCNet from a YAML config; resumable.
evaluate
    The evaluation protocol (patient-level folds and leave-one-section-out) with baselines.

Each command module holds its parser (``add``) and its runner (``run``); the parsers do no
domain work and import nothing heavy, so ``--help`` and usage errors come at once.
"""

from __future__ import annotations

import argparse
import sys

from . import cohort, convert, evaluate, genes, info, predict, pretrain, train

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The ``stpredict`` argument parser."""
    from .._version import __version__

    parser = argparse.ArgumentParser(
        prog="stpredict",
        description="Predict spatial gene expression from H&E slides. Research use only; not for diagnosis.",
    )
    parser.add_argument("--version", action="version", version=f"napari-stpredict {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    predict.add(sub)
    cohort.add(sub)
    info.add(sub)
    genes.add(sub)
    convert.add(sub)
    pretrain.add(sub)
    train.add(sub)
    evaluate.add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    import logging

    # tifffile logs structural oddities as warnings ("invalid offset to first page") on
    # the way to an error of ours that says it better; keep the terminal to ours.
    logging.getLogger("tifffile").setLevel(logging.ERROR)
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except BrokenPipeError:
        # The reader went away (``stpredict genes | head``): no traceback; Python's own
        # advice is to point stdout at devnull so the exit-time flush cannot fail again.
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141 if os.name == "posix" else 1
