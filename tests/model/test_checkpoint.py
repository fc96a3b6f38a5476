"""Checkpoint round trip and every bad-checkpoint error."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_stpredict.model import (
    CheckpointError,
    IOContract,
    ModelConfig,
    create_model,
    fit_ridge,
    load_model,
    save_checkpoint,
)

GENES = [f"G{i}" for i in range(12)]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model(ModelConfig(n_genes=len(GENES), img_size=64))
    io = IOContract(patch_um=100.0, input_px=64, genes=list(GENES))
    rng = np.random.default_rng(0)
    expr = torch.from_numpy(rng.random((30, len(GENES))).astype(np.float32))
    with torch.no_grad():
        emb = model.eval().encode_expression(expr)
    ridge = fit_ridge(rng.normal(size=(30, 256)), expr.numpy())
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    save_checkpoint(
        path,
        model=model,
        io=io,
        bank_embeddings=emb,
        bank_expression=expr,
        ridge=ridge,
        provenance={"train_sections": ["X1"]},
        evaluation={"r": 0.1},
    )
    return path, model


def test_round_trip_predicts_the_same(checkpoint):
    path, model = checkpoint
    loaded = load_model(path, device="cpu")
    assert loaded.genes == GENES and loaded.io.patch_um == 100.0 and loaded.io.mpp == pytest.approx(100 / 64)
    assert loaded.provenance["train_sections"] == ["X1"] and loaded.evaluation == {"r": 0.1}
    patches = np.random.default_rng(1).integers(0, 255, (3, 64, 64, 3), dtype=np.uint8)
    x = loaded.preprocess(patches)
    with torch.no_grad():
        ref = model.eval().encode_image(x)
    got = loaded.embed(patches)
    assert torch.allclose(ref, got, atol=0.05)  # fp16 storage
    pred, conf = loaded.predict(patches)
    assert pred.shape == (3, len(GENES)) and conf.shape == (3,)
    ridge_pred, _ = loaded.predict(patches, method="ridge")
    assert ridge_pred.shape == (3, len(GENES))


def _tamper(checkpoint, tmp_path, edit):
    path, _ = checkpoint
    data = torch.load(path, weights_only=True)
    edit(data)
    out = tmp_path / "bad.pt"
    torch.save(data, out)
    return out


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda d: d.update(format_version=99), "format version 99"),
        (lambda d: d.pop("bank"), "missing keys: bank"),
        (lambda d: d["io"].update(genes=GENES[:-1]), "11 genes but the model predicts 12"),
        (lambda d: d["io"].update(genes=GENES[:-1] + ["G0"]), "duplicates"),
        (
            lambda d: d["state_dict"]["image_projection.fc.weight"].fill_(float("nan")),
            "image_projection.fc.weight.*NaN",
        ),
        (lambda d: d["bank"].update(expression=d["bank"]["expression"][:, :5]), "bank expression has shape"),
        (lambda d: d["model_config"].update(backbone="resnet18"), "do not match a resnet18"),
        (lambda d: d["model_config"].update(colour="red"), "unknown ModelConfig keys: colour"),
        (lambda d: d.update(format="something-else"), "not a napari-stpredict checkpoint"),
    ],
)
def test_bad_checkpoints_name_the_problem(checkpoint, tmp_path, edit, message):
    bad = _tamper(checkpoint, tmp_path, edit)
    with pytest.raises(CheckpointError, match=message) as info:
        load_model(bad, device="cpu")
    assert "bad.pt" in str(info.value)


def test_not_a_checkpoint_and_missing_file(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_text("hello")
    with pytest.raises(CheckpointError, match="junk.pt.*not a readable"):
        load_model(junk)
    with pytest.raises(CheckpointError, match="nothere.pt.*not found"):
        load_model(tmp_path / "nothere.pt")


def test_pickled_objects_are_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"format": "napari-stpredict-checkpoint", "payload": Evil()}, path)
    with pytest.raises(CheckpointError, match="evil.pt"):
        load_model(path)
