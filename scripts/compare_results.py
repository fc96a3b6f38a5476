"""Cell-by-cell differences between two evaluation result folders (A minus B).

Used for quick vs full, and for the spread between training seeds:

    python scripts/compare_results.py evaluation/results/quick evaluation/results/full
    python scripts/compare_results.py evaluation/experiments/seed1/full evaluation/results/full \
        --protocol patient

Only methods and protocols present in both folders are compared.
"""

from __future__ import annotations

import argparse

from napari_stpredict.training.report import agreement_table, summarise


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", help="result folder (holds <protocol>/<fold>/<variant>.json)")
    parser.add_argument("b", help="result folder to subtract")
    parser.add_argument("--protocol", nargs="*", default=None, help="limit to these protocols")
    parser.add_argument("--tolerance", type=float, default=0.03)
    args = parser.parse_args()
    a, b = summarise(args.a), summarise(args.b)
    if args.protocol:
        a = {k: v for k, v in a.items() if k in args.protocol}
    print(agreement_table(a, b, tolerance=args.tolerance, heading=f"{args.a} minus {args.b}"))


if __name__ == "__main__":
    main()
