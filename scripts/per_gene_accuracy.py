"""Held-out Pearson r of every gene, from the patient-level fold models.

Usage (after ``stpredict evaluate --config evaluation/config.yaml --protocol patient``
has trained the fold models under runs/eval/full/patient):

    python scripts/per_gene_accuracy.py [--config evaluation/config.yaml]

For each held-out section (B4 with the model trained on patient C; C2-C6 with the model
trained on B4), the fold model's retrieval prediction is compared with the measured
expression, gene by gene (with the fold model's top-k and spatial context, as
``stpredict evaluate`` scores it); each gene's r is the mean over the six sections, as the
evaluation protocol averages. Writes evaluation/results/full/per_gene_r.json, which
``scripts/ship_model.py`` embeds in the shipped checkpoint (``stpredict genes`` and the
widget show it).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main() -> None:
    from napari_stpredict.model import load_model
    from napari_stpredict.training.metrics import pearson_per_gene
    from napari_stpredict.training.protocol import PROTOCOLS, EvalConfig
    from napari_stpredict.training.scoring import held_out_predictions
    from napari_stpredict.training.sections import section_spots

    parser = argparse.ArgumentParser()
    parser.add_argument("--config", type=Path, default=Path("evaluation/config.yaml"))
    args = parser.parse_args()
    cfg = EvalConfig.from_yaml(args.config)
    per_gene: dict[str, list[float]] = {}
    for fold, spec in PROTOCOLS["patient"]["folds"].items():
        model = load_model(Path(cfg.run_dir) / "full" / "patient" / fold / "cmrcnet" / "model.pt", device="cpu")
        for section in spec["test"]:
            spots = section_spots(
                section,
                cfg.train.her2st,
                model.genes,
                patch_um=model.io.patch_um,
                input_px=model.io.input_px,
                cache_dir=Path(cfg.train.cache_dir),
            )
            pred = held_out_predictions(model, spots, section, cfg.train)
            for gene, r in zip(model.genes, pearson_per_gene(pred, spots.expression)):
                per_gene.setdefault(gene, []).append(float(r))
            print(fold, section, flush=True)
    table = {g: (round(float(np.nanmean(v)), 4) if np.isfinite(v).any() else None) for g, v in sorted(per_gene.items())}
    out = Path(cfg.out_dir) / "full" / "per_gene_r.json"
    out.write_text(
        json.dumps(
            {
                "source": "patient-level folds, retrieval with the bank of other patients' spots "
                f"(top-k {model.retrieval.top_k}, spatial context σ {model.retrieval.context_sigma_um:g} µm), "
                "mean Pearson r over the 6 held-out sections (B4, C2-C6)",
                "r": table,
            },
            indent=1,
        ),
        encoding="utf-8",
    )
    print(f"{len(table)} genes -> {out}")


if __name__ == "__main__":
    main()
