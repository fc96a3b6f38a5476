"""CMRCNet: forward/backward, losses, retrieval and the ridge head."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_stpredict.model import ModelConfig, ReferenceBank, create_model, fit_ridge, retrieve
from napari_stpredict.model.losses import combined_loss, contrastive_loss


@pytest.mark.parametrize(
    "backbone,reconstruction", [("resnet10t", True), ("resnet10t", False), ("vit_tiny_patch16_224", True)]
)
def test_forward_backward_without_nan(backbone, reconstruction):
    torch.manual_seed(0)
    model = create_model(ModelConfig(backbone=backbone, n_genes=20, reconstruction=reconstruction, img_size=64))
    images, expression = torch.randn(6, 3, 64, 64), torch.rand(6, 20) * 3
    out = model(images, expression)
    assert torch.isfinite(out["loss"])
    assert ("reconstruction" in out) == reconstruction
    out["loss"].backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert model.encode_image(images).shape == (6, 256)
    assert model.encode_expression(expression).shape == (6, 256)


def test_contrastive_temperature_divides_logits_and_targets_alike():
    """Temperature T is the same as embeddings scaled by 1/sqrt(T) at T = 1 (logits and
    soft targets are both bilinear in the embeddings); with the targets multiplied by T,
    as in BLEEP's code, they would sharpen while the logits soften."""
    torch.manual_seed(0)
    a, b = torch.randn(8, 16), torch.randn(8, 16)
    for t in (0.5, 2.0):
        scaled = contrastive_loss(a / t**0.5, b / t**0.5, 1.0)
        assert torch.allclose(contrastive_loss(a, b, t), scaled, atol=1e-5)


def test_contrastive_loss_prefers_matching_pairs():
    torch.manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(8, 16), dim=1) * 4
    assert contrastive_loss(a, a) < contrastive_loss(a, a[torch.randperm(8)])


def test_combined_loss_is_log1p_sum():
    total = combined_loss(torch.tensor(3.0), torch.tensor(1.0))
    assert float(total) == pytest.approx(np.log(4) + np.log(2))
    assert float(combined_loss(torch.tensor(3.0), None)) == pytest.approx(np.log(4))


def test_retrieval_returns_bank_mean_when_all_similarities_tie():
    bank = ReferenceBank(torch.ones(10, 4), torch.arange(30, dtype=torch.float32).view(10, 3))
    pred, sim = retrieve(torch.ones(2, 4), bank, top_k=3)
    assert torch.allclose(pred, bank.expression.mean(0).expand(2, 3))
    assert torch.allclose(sim, torch.ones(2))


def test_retrieval_averages_the_top_k():
    emb = torch.eye(4)
    expr = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    query = torch.tensor([[1.0, 0.9, 0.0, 0.0]])
    pred, _ = retrieve(query, ReferenceBank(emb, expr), top_k=2)
    assert float(pred) == pytest.approx(1.5)


def test_ridge_recovers_a_linear_map():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 5))
    w = rng.normal(size=(5, 3))
    y = x @ w + 2.0 + rng.normal(scale=0.01, size=(200, 3))
    head = fit_ridge(x, y, alphas=(1e-3, 1.0))
    pred = head(torch.from_numpy(x).float()).numpy()
    assert np.abs(pred - y).max() < 0.1


def test_unknown_backbone_is_a_clear_error():
    from napari_stpredict.errors import StPredictError

    with pytest.raises(StPredictError, match="not_a_net"):
        create_model(ModelConfig(backbone="not_a_net", n_genes=3))


def test_backbone_weights_from_a_local_file(tmp_path):
    """Users with a pathology foundation model on disk load it through backbone_weights."""
    torch.manual_seed(1)
    donor = create_model(ModelConfig(backbone="resnet10t", n_genes=3)).backbone
    path = tmp_path / "my_backbone.pth"
    torch.save(donor.state_dict(), path)
    model = create_model(ModelConfig(backbone="resnet10t", backbone_weights=str(path), n_genes=3))
    for (k, a), b in zip(donor.state_dict().items(), model.backbone.state_dict().values()):
        assert torch.equal(a, b), k
