"""The trust calibration: computed by training, stored in and validated with the checkpoint
(``weights_only`` loading), and reproducible for the bundled model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from napari_stpredict.model import CheckpointError, default_model_path, load_model, read_checkpoint
from napari_stpredict.training.calibration import youden_threshold


def test_youden_threshold_on_a_known_split():
    score = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    label = np.array([False, False, False, True, True, True])
    threshold, sens, spec = youden_threshold(score, label)
    assert 0.3 < threshold < 0.7 and sens == 1.0 and spec == 1.0


def _two_section_config(her2st_dir, tmp_path):
    """A 2-step training on her2st C3 and C4 with a few genes (fast, real data)."""
    from napari_stpredict.model.config import IOContract, ModelConfig
    from napari_stpredict.training.train import TrainConfig

    return TrainConfig(
        train_sections=["C3", "C4"],
        her2st=str(her2st_dir),
        benchmark_genes=None,
        genes=["ERBB2", "GRB7", "SCD", "FASN", "CD24", "IGKC", "COL1A1", "MGP"],
        model=ModelConfig(backbone="resnet10t"),
        io=IOContract(patch_um=112.0, input_px=48),
        steps=2,
        batch_size=64,
        cache_dir=str(tmp_path / "cache"),
        device="cpu",
    )


@pytest.mark.slow
def test_training_writes_a_calibration(her2st_dir, tmp_path):
    from napari_stpredict.training.train import train

    cfg = _two_section_config(her2st_dir, tmp_path)
    model = load_model(train(cfg, tmp_path / "run"), device="cpu")
    domain = model.calibration["domain"]
    assert domain["reference"].shape[0] == model.provenance["train_spots"]
    assert set(domain["held_out_share"]) == {"C3", "C4"} and domain["threshold"] > 0
    assert model.calibration["tumor"]["gene_mean"].shape == (len(cfg.genes),)


@pytest.mark.slow
def test_calibrate_command_reproduces_the_shipped_calibration(her2st_dir, tmp_path):
    """`stpredict train --calibrate` on the bundled checkpoint gives back what it ships."""
    from napari_stpredict.cli import main

    data = torch.load(default_model_path(), map_location="cpu", weights_only=True)
    del data["calibration"]  # an older checkpoint, as written before calibration existed
    old = tmp_path / "old.pt"
    torch.save(data, old)
    assert load_model(old, device="cpu").calibration is None
    config = tmp_path / "cfg.yaml"
    config.write_text(f"her2st: {her2st_dir.as_posix()}\ncache_dir: {(tmp_path / 'cache').as_posix()}\n")
    out = tmp_path / "new.pt"
    assert main(["train", "--config", str(config), "--calibrate", str(old), "--out", str(out)]) == 0
    new, shipped = load_model(out, device="cpu"), load_model(device="cpu")
    assert new.calibration["domain"]["threshold"] == pytest.approx(shipped.calibration["domain"]["threshold"], rel=1e-3)
    # The shipped calibration was computed from the float32 network before it was stored in
    # float16; from the stored weights the tumour scores agree to a few thousandths, and
    # Youden's threshold (an argmax over a flat optimum) lands on an equally good cut.
    got, ships = new.calibration["tumor"], shipped.calibration["tumor"]
    assert torch.allclose(got["gene_mean"], ships["gene_mean"], atol=5e-3)
    assert torch.allclose(got["gene_std"], ships["gene_std"], atol=5e-3)
    assert got["training_auc"] == pytest.approx(ships["training_auc"], abs=1e-3)
    youden = got["sensitivity"] + got["specificity"] - 1
    assert youden == pytest.approx(ships["sensitivity"] + ships["specificity"] - 1, abs=0.01)
    assert got["threshold"] == pytest.approx(ships["threshold"], abs=0.05)
    for (k, a), b in zip(shipped.network.state_dict().items(), new.network.state_dict().values()):
        assert torch.equal(a, b), k  # weights and bank unchanged
    assert torch.equal(new.bank.expression, shipped.bank.expression)


def _with(tmp_path, change):
    data = torch.load(default_model_path(), map_location="cpu", weights_only=True)
    change(data["calibration"])
    path = tmp_path / "crafted.pt"
    torch.save(data, path)
    return path


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda c: c["tumor"]["gene_std"].zero_(), "gene_std must be positive"),
        (lambda c: c["tumor"].update(gene_mean=torch.zeros(3)), "gene_mean must be a tensor of 795"),
        (lambda c: c["domain"].update(threshold=float("nan")), "domain.threshold must be a positive number"),
        (lambda c: c["domain"].update(k=0), "domain.k must be a positive integer"),
        (lambda c: c["domain"]["reference"].fill_(float("inf")), "reference holds NaN or infinite"),
        (lambda c: c["domain"].update(reference=torch.zeros(5, 7)), "7 features per image"),
        (lambda c: c.pop("tumor"), "calibration must hold 'domain' and 'tumor'"),
    ],
)
def test_bad_calibration_is_refused_with_a_message(tmp_path, change, message):
    path = _with(tmp_path, change)
    with pytest.raises(CheckpointError, match=f"crafted.pt.*{message}"):
        load_model(path, device="cpu")


def test_calibration_loads_with_weights_only():
    data = read_checkpoint(default_model_path())  # torch.load(weights_only=True) inside
    assert isinstance(data["calibration"]["domain"]["reference"], torch.Tensor)
    assert data["calibration"]["domain"]["reference"].dtype == torch.float16


@pytest.mark.slow
def test_a_model_with_context_is_calibrated_on_context_predictions(her2st_dir, tmp_path):
    """Changing the retrieval settings reuses the trained weights (no second training);
    the checkpoint records them; the tumour standardisation is computed on predictions
    mixed with the neighbouring patches, as a slide's are; without the neighbours it is
    refused."""
    from dataclasses import replace

    from napari_stpredict.training.calibration import compute_calibration
    from napari_stpredict.training.data import SpotSet
    from napari_stpredict.training.neighbours import context_embeddings
    from napari_stpredict.training.sections import section_spots
    from napari_stpredict.training.train import iter_train

    cfg = _two_section_config(her2st_dir, tmp_path)
    run = tmp_path / "run"
    plain = load_model(list(iter_train(cfg, run))[-1]["checkpoint"], device="cpu")
    stages = list(iter_train(replace(cfg, top_k=20, context_sigma_um=56.0), run))
    assert not [p for p in stages if p["stage"] == "train"], "the finished training is reused"
    model = load_model(stages[-1]["checkpoint"], device="cpu")
    for (k, a), b in zip(plain.network.state_dict().items(), model.network.state_dict().values()):
        assert torch.equal(a, b), k
    assert (model.retrieval.top_k, model.retrieval.context_sigma_um) == (20, 56.0)
    assert "context σ 56 µm" in model.calibration["tumor"]["how"]
    assert not torch.allclose(model.calibration["tumor"]["gene_std"], plain.calibration["tumor"]["gene_std"])

    train = SpotSet.concat(
        [
            section_spots(s, str(her2st_dir), cfg.genes, patch_um=112.0, input_px=48, cache_dir=tmp_path / "cache")
            for s in ("C3", "C4")
        ]
    )
    with pytest.raises(ValueError, match="neighbouring patches"):
        compute_calibration(model, train)
    # by hand: the same neighbours give the stored standardisation
    context = context_embeddings(model, train, ["C3", "C4"], str(her2st_dir), cache_dir=tmp_path / "cache")
    assert context[1].shape == (8, len(train)) and 0.3 < context[1].mean() < 1.0  # edge spots lack some
    again = compute_calibration(model, train, neighbours=context)
    # (the checkpoint stores the bank in float16: equal to about 1e-3)
    assert torch.allclose(again["tumor"]["gene_mean"], model.calibration["tumor"]["gene_mean"], atol=5e-3)


@pytest.mark.slow
def test_neighbours_of_an_h5ad_section_equal_those_of_the_her2st_id(her2st_dir, tmp_path):
    """User data (an .h5ad with its image path and resolution) gets the same neighbouring
    patches and tissue flags as the her2st reader, in spot order."""
    from napari_stpredict.io.st_data import read_her2st_section
    from napari_stpredict.training.neighbours import map_neighbours
    from napari_stpredict.training.sections import section_spots

    adata = read_her2st_section(str(her2st_dir), "C3", with_image=True)
    lib = adata.uns["spatial"]["C3"]
    lib["metadata"]["image_path"] = str(Path(lib["metadata"]["image_path"]).resolve())
    path = tmp_path / "C3.h5ad"
    adata.write_h5ad(path)
    genes = ["ERBB2", "GRB7"]

    def mean_colour(patches):
        return patches.reshape(len(patches), -1).mean(1)

    by_id = section_spots("C3", str(her2st_dir), genes)
    by_file = section_spots(str(path), None, genes)
    a, tissue_a = map_neighbours(mean_colour, by_id, ["C3"], str(her2st_dir), patch_um=112.0, input_px=32)
    b, tissue_b = map_neighbours(mean_colour, by_file, [str(path)], None, patch_um=112.0, input_px=32)
    assert np.array_equal(tissue_a, tissue_b) and 0.3 < tissue_a.mean() < 1.0
    assert all(np.allclose(x, y) for x, y in zip(a, b))
    # each offset really is a different patch (not the spot's own)
    assert not np.allclose(a[0], a[7])


@pytest.mark.slow
def test_a_model_calibrated_with_adaptation_adapts_each_training_section(her2st_dir, tmp_path):
    """Switching adaptation on reuses the trained weights; the checkpoint records it; the
    tumour standardisation is computed on per-section adapted predictions."""
    from dataclasses import replace

    from napari_stpredict.model import load_model
    from napari_stpredict.training.train import iter_train

    cfg = _two_section_config(her2st_dir, tmp_path)
    run = tmp_path / "run"
    plain = load_model(list(iter_train(cfg, run))[-1]["checkpoint"], device="cpu")
    stages = list(iter_train(replace(cfg, adaptation="standardise"), run))
    assert not [p for p in stages if p["stage"] == "train"], "the finished training is reused"
    model = load_model(stages[-1]["checkpoint"], device="cpu")
    assert model.retrieval.adaptation == "standardise"
    assert "adapted to the training average (standardise)" in model.calibration["tumor"]["how"]
    assert not torch.allclose(model.calibration["tumor"]["gene_mean"], plain.calibration["tumor"]["gene_mean"])
    # the out-of-domain reference stays the raw features
    assert torch.equal(model.calibration["domain"]["reference"], plain.calibration["domain"]["reference"])
    with pytest.raises(ValueError, match="adaptation must be one of"):
        list(iter_train(replace(cfg, adaptation="bogus"), run))


@pytest.mark.slow
def test_section_z_targets_train_and_bank_on_per_section_statistics(her2st_dir, tmp_path):
    """Scale-free expression targets (issue 19): the encoder learns from each gene
    standardised within its section; the bank keeps log1p CP10k for what retrieval
    returns; the setting is recorded and changes the training fingerprint."""
    from dataclasses import replace

    from napari_stpredict.training.data import SpotSet
    from napari_stpredict.training.sections import section_spots
    from napari_stpredict.training.train import _config_hash, encoder_input, iter_train

    cfg = replace(_two_section_config(her2st_dir, tmp_path), expression_targets="section_z")
    assert _config_hash(cfg) != _config_hash(_two_section_config(her2st_dir, tmp_path))
    model = load_model(list(iter_train(cfg, tmp_path / "run"))[-1]["checkpoint"], device="cpu")
    assert model.provenance["expression_targets"] == "section_z"
    train = SpotSet.concat([section_spots(s, str(her2st_dir), cfg.genes) for s in ("C3", "C4")])
    z = encoder_input(train, "section_z")
    for section in ("C3", "C4"):
        rows = train.section == section
        varying = train.expression[rows].std(0) > 1e-6
        np.testing.assert_allclose(z[rows][:, varying].mean(0), 0, atol=1e-4)
        np.testing.assert_allclose(z[rows][:, varying].std(0), 1, atol=1e-3)
    n = len(train)
    np.testing.assert_allclose(model.bank.expression[:n].numpy(), train.expression, atol=2e-2)  # log1p kept
    with torch.no_grad():
        expected = torch.nn.functional.normalize(model.network.encode_expression(torch.from_numpy(z)), dim=1)
    np.testing.assert_allclose(model.bank.embeddings[:n].float().numpy(), expected.numpy(), atol=2e-2)
    with pytest.raises(ValueError, match="expression_targets must be one of log1p, section_z"):
        encoder_input(train, "ranks")


@pytest.mark.slow
def test_a_killed_patch_cache_write_leaves_no_file_to_load(her2st_dir, tmp_path, monkeypatch):
    """The her2st patch cache is written beside its name and renamed: a write that dies
    leaves nothing a later run would load as a truncated array."""
    import numpy as np

    from napari_stpredict.training import data as data_module
    from napari_stpredict.training.sections import section_spots

    def dying_save(fh, array, **options):
        fh.write(b"\x93NUMPY half a header")
        raise KeyboardInterrupt  # the user's Ctrl-C, or a kill, in the middle of the write

    cache = tmp_path / "cache"
    monkeypatch.setattr(data_module.np, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        section_spots("C3", str(her2st_dir), ["ERBB2"], patch_um=112.0, input_px=32, cache_dir=cache)
    assert list(cache.iterdir()) == []
    monkeypatch.undo()
    spots = section_spots("C3", str(her2st_dir), ["ERBB2"], patch_um=112.0, input_px=32, cache_dir=cache)
    (cached,) = cache.iterdir()
    np.testing.assert_array_equal(np.load(cached), spots.patches)


@pytest.mark.slow
def test_spot_sets_that_begin_alike_do_not_share_a_patch_cache(her2st_dir, tmp_path):
    """The cache key holds every spot's position, not only the first two spots'."""
    import numpy as np

    from napari_stpredict.training.data import attach_her2st_patches
    from napari_stpredict.training.sections import section_spots

    spots = section_spots("C3", str(her2st_dir), ["ERBB2"], patch_um=112.0, input_px=16)
    first = spots.subset(np.arange(len(spots.xy)) < 10)
    other = spots.subset(np.isin(np.arange(len(spots.xy)), [0, 1, 2, 3, 4, 5, 6, 7, 8, 20]))
    cache = tmp_path / "cache"
    a = attach_her2st_patches(first, str(her2st_dir), "C3", 112.0, 16, cache).patches
    b = attach_her2st_patches(other, str(her2st_dir), "C3", 112.0, 16, cache).patches
    assert len(list(cache.iterdir())) == 2
    np.testing.assert_array_equal(a[:9], b[:9])
    assert not np.array_equal(a[9], b[9])


@pytest.mark.slow
def test_contrast_tumour_score_is_calibrated_and_scored_on_a_held_out_section(her2st_dir, tmp_path):
    """With a counter panel the calibration holds a second threshold, for the marker z-score
    minus the counter panel's; a held-out section's trust scores then report its calls and
    keep each labelled spot's contrast score, equal to that difference computed by hand."""
    from napari_stpredict.training.calibration import compute_calibration, training_spot_predictions
    from napari_stpredict.training.data import SpotSet
    from napari_stpredict.training.scoring import trust_scores
    from napari_stpredict.training.sections import section_spots
    from napari_stpredict.training.train import train
    from napari_stpredict.vocabulary import marker_zscore

    cfg = _two_section_config(her2st_dir, tmp_path)
    model = load_model(train(cfg, tmp_path / "run"), device="cpu")

    def spots(s):
        return section_spots(s, str(her2st_dir), cfg.genes, patch_um=112.0, input_px=48, cache_dir=tmp_path / "cache")

    training = SpotSet.concat([spots(s) for s in ("C3", "C4")])
    markers, counter = ["ERBB2", "GRB7", "SCD", "FASN"], ["COL1A1", "MGP", "IGKC", "ERBB2"]
    plain = compute_calibration(model, training, markers=markers)
    assert "contrast" not in plain["tumor"]
    cal = compute_calibration(model, training, markers=markers, counter=counter)
    contrast = cal["tumor"]["contrast"]
    assert contrast["counter_panel"] == ["COL1A1", "MGP", "IGKC"]  # a marker is never its own counter
    assert 0.0 <= contrast["training_auc"] <= 1.0 and 0.0 <= contrast["sensitivity"] <= 1.0
    assert cal["tumor"]["threshold"] == plain["tumor"]["threshold"]  # the absolute call is unchanged
    # the training-spot predictions the experiments re-score are the calibration's own
    predicted = training_spot_predictions(model, training)
    assert predicted.shape == (len(training), len(model.genes))
    assert np.allclose(predicted.mean(0), cal["tumor"]["gene_mean"].numpy(), atol=1e-5)

    model.calibration = cal
    held_out = spots("C2")
    retrieval = model.predict(held_out.patches)[0]
    out = trust_scores(model, held_out, retrieval, markers)
    assert set(out["contrast"]) >= {"threshold", "auc", "sensitivity", "specificity", "called_share"}
    scores = out["labelled_scores"]
    known = held_out.tumor >= 0
    idx = [model.genes.index(g) for g in markers]
    cidx = [model.genes.index(g) for g in contrast["counter_panel"]]
    mean, sd = cal["tumor"]["gene_mean"].numpy(), cal["tumor"]["gene_std"].numpy()
    by_hand = marker_zscore(retrieval[:, idx], mean[idx], sd[idx]) - marker_zscore(
        retrieval[:, cidx], mean[cidx], sd[cidx]
    )
    assert np.allclose(scores["contrast"], by_hand[known], atol=1e-3)
    assert len(scores["contrast"]) == len(scores["absolute"]) == int(known.sum())
