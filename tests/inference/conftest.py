"""A small real (untrained) model checkpoint for engine tests that do not judge accuracy."""

from __future__ import annotations

import numpy as np
import pytest
import torch


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory):
    from napari_stpredict.model import IOContract, ModelConfig, create_model, fit_ridge, save_checkpoint

    genes = ["ERBB2", "GRB7", "EPCAM", "CD24", "SCD", "MUCL1", "IGKC", "COL1A1"]
    torch.manual_seed(0)
    model = create_model(ModelConfig(n_genes=len(genes), img_size=32)).eval()
    rng = np.random.default_rng(0)
    expr = torch.from_numpy(rng.gamma(2.0, 1.0, (200, len(genes))).astype(np.float32))
    with torch.no_grad():
        emb = model.encode_expression(expr)
    ridge = fit_ridge(rng.normal(size=(200, 256)), expr.numpy())
    path = tmp_path_factory.mktemp("tiny") / "tiny.pt"
    save_checkpoint(path, model=model, io=IOContract(patch_um=112.0, input_px=32, genes=genes),
                    bank_embeddings=emb, bank_expression=expr, ridge=ridge,
                    provenance={"train_sections": [], "markers": {"panel": ["ERBB2", "GRB7", "EPCAM"]}})
    return path


@pytest.fixture(scope="session")
def tiny_model(tiny_model_path):
    from napari_stpredict.model import load_model

    return load_model(tiny_model_path, device="cpu")
