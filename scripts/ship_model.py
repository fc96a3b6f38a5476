"""Copy a trained checkpoint into the package as the default model, with its evaluation.

The evaluation summary (evaluation/results/full/summary.json, made by
``stpredict evaluate``), the 3-seed table (evaluation/results/seeds.json) and the
per-gene figures are stored inside the checkpoint, so the model carries the
figures it was shipped with. Refuses a checkpoint trained on section C2 (the sample).

Usage: python scripts/ship_model.py runs/default_model/model.pt
           [--per-gene FILE --per-gene-note TEXT]

``--per-gene`` embeds per-gene figures from another evaluation than the summary's (the fold
models that measure them were not kept); ``--per-gene-note`` then says so in their
``source``, which `stpredict genes` prints.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from napari_stpredict.io.atomic import atomic_path
from napari_stpredict.model import default_model_path, read_checkpoint, write_card


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--summary", type=Path, default=Path("evaluation/results/full/summary.json"))
    parser.add_argument("--per-gene", type=Path, default=None, help="default: per_gene_r.json beside the summary")
    parser.add_argument("--per-gene-note", default="", help="appended to the per-gene figures' source")
    args = parser.parse_args()
    checked = read_checkpoint(args.checkpoint)  # validates
    prov = checked["provenance"]
    if "C2" in prov.get("train_sections", []) or "C2" in prov.get("bank_sections", []):
        raise SystemExit("refusing to ship: section C2 (the sample slide) is in the training data or bank")
    data = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    if args.summary.exists():
        data["evaluation"] = json.loads(args.summary.read_text(encoding="utf-8"))
        data["evaluation"]["source"] = "stpredict evaluate --config evaluation/config.yaml"
    seeds = args.summary.parent.parent / "seeds.json"  # scripts/seed_table.py: the recipe over 3 seeds
    if seeds.exists():
        data.setdefault("evaluation", {})["seeds"] = {
            "source": "scripts/seed_table.py (patient-level folds, seeds 0, 1, 2)",
            "rows": json.loads(seeds.read_text(encoding="utf-8")),
        }
    per_gene = args.per_gene or args.summary.parent / "per_gene_r.json"  # scripts/per_gene_accuracy.py
    if args.per_gene is not None and not per_gene.is_file():
        raise SystemExit(f"--per-gene {per_gene}: no such file")
    if per_gene.exists():
        table = json.loads(per_gene.read_text(encoding="utf-8"))
        if args.per_gene_note:
            table["source"] = f"{table.get('source', 'held-out evaluation')}; {args.per_gene_note}"
        data.setdefault("evaluation", {})["per_gene_r"] = table
    target = default_model_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        torch.save(data, tmp)
    read_checkpoint(target)
    write_card(target, data)  # the torch-free description (`stpredict genes`, cached reruns)
    print(f"shipped {args.checkpoint} -> {target} ({target.stat().st_size / 2**20:.1f} MB)")


if __name__ == "__main__":
    main()
