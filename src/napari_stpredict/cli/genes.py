"""``stpredict genes``: the genes a model predicts, with their held-out accuracy."""

from __future__ import annotations

import math
import sys
from pathlib import Path

from ..errors import StPredictError

__all__ = ["add", "run"]


def add(sub) -> None:
    """Add the command's parser to ``sub``."""
    p = sub.add_parser("genes", help="list the genes a model predicts, with their held-out accuracy")
    p.add_argument("--model", type=Path, default=None, help="checkpoint (default: the bundled model)")
    p.add_argument(
        "--sort",
        choices=["name", "accuracy"],
        default="name",
        help="order: by name (default) or by held-out Pearson r, best first",
    )
    p.set_defaults(func=run)


def run(args) -> int:
    """Run the command; returns its exit status."""
    from ..model import open_model
    from ..model.accuracy import gene_accuracy

    try:
        model = open_model(args.model, device="cpu")  # the card: no torch for a gene list
    except StPredictError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    accuracy, source = gene_accuracy(model)
    genes = sorted(model.genes, key=str.upper)
    if args.sort == "accuracy":
        genes.sort(key=lambda g: -accuracy[g] if accuracy.get(g) is not None else math.inf)
    panel = set(model.provenance.get("markers", {}).get("panel", []))
    print(f"# {len(genes)} genes of {model.source}; r: {source}")
    print("gene\tr\tmarker_panel")
    for gene in genes:
        r = accuracy.get(gene)
        print(f"{gene}\t{'' if r is None else f'{r:.3f}'}\t{'yes' if gene in panel else ''}")
    return 0
