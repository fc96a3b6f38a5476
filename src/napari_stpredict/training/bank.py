"""Rebuild a checkpoint's reference bank without retraining.

The bank (expression embeddings + expression of reference spots) does not change the
trained weights, so it can be swapped: e.g. keep only the training spots (the paper's
setting), or add your own measured spots as references.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["rebuild_bank"]


def rebuild_bank(
    checkpoint: str | Path,
    out: str | Path,
    *,
    bank_sections: list[str],
    her2st: str | None,
    max_bank: int = 6000,
    seed: int = 0,
    cache_dir: str | Path = "runs/cache",
) -> Path:
    """Write a copy of ``checkpoint`` whose bank is its training spots plus ``bank_sections``.

    The confidence reference and the trust calibration (out-of-domain score, tumour
    threshold) are recomputed against the new bank (they need the training sections'
    images). Weights, ridge head, genes and contract are unchanged. ``cache_dir`` holds
    the sections' patches (the training configuration's ``cache_dir``).
    """
    import torch

    from ..model import load_model, save_checkpoint
    from .data import SpotSet
    from .neighbours import context_embeddings
    from .sections import section_spots
    from .train import _confidence_reference, encoder_input

    model = load_model(checkpoint, device="cpu")
    prov = dict(model.provenance)
    genes, io = model.genes, model.io
    train = SpotSet.concat(
        [
            section_spots(s, her2st, genes, patch_um=io.patch_um, input_px=io.input_px, cache_dir=Path(cache_dir))
            for s in prov["train_sections"]
        ]
    )
    extra = [section_spots(s, her2st, genes, cache_dir=Path(cache_dir)) for s in bank_sections]
    everything = SpotSet.concat([train, *extra]) if extra else train
    expression = everything.expression
    # The encoder's input as it was trained (per-section statistics of whole sections).
    encoded = encoder_input(everything, prov.get("expression_targets", "log1p"))
    if len(expression) > max_bank:
        rng = np.random.default_rng(seed)
        keep = np.concatenate(
            [
                np.arange(len(train)),
                rng.choice(np.arange(len(train), len(expression)), max_bank - len(train), replace=False),
            ]
        )
        expression, encoded = expression[np.sort(keep)], encoded[np.sort(keep)]
    with torch.inference_mode():
        bank_emb = model.network.encode_expression(torch.from_numpy(encoded))
        train_emb = model.embed_many(train.patches)
    prov.update(
        bank_sections=list(bank_sections),
        bank_spots=int(len(expression)),
        confidence_reference=_confidence_reference(train_emb, bank_emb, model.retrieval.top_k),
    )
    from ..model import ReferenceBank
    from .calibration import compute_calibration

    model.bank = ReferenceBank(bank_emb, torch.from_numpy(expression))
    model.provenance = prov
    context = context_embeddings(model, train, prov["train_sections"], her2st, cache_dir=Path(cache_dir))
    calibration = compute_calibration(model, train, neighbours=context)
    return save_checkpoint(
        out,
        model=model.network,
        io=io,
        bank_embeddings=bank_emb,
        bank_expression=torch.from_numpy(expression),
        ridge=model.ridge,
        provenance=prov,
        evaluation=model.evaluation,
        calibration=calibration,
        retrieval=model.retrieval,
    )
