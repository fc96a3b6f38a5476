"""Training on a small real her2st subset: loss falls, seeded determinism, resume, genes."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from napari_stpredict.model import ModelConfig, create_model, load_model
from napari_stpredict.model.config import IOContract
from napari_stpredict.training.data import attach_her2st_patches, her2st_section, spot_set
from napari_stpredict.training.train import TrainConfig, iter_train, train

GENES = ["ERBB2", "GRB7", "MUCL1", "SCD", "FASN", "GNAS", "MGP", "CD24", "IGKC", "COL1A1"]


@pytest.fixture(scope="module")
def small_set(her2st_dir, tmp_path_factory):
    adata = her2st_section(str(her2st_dir), "C3")
    spots = spot_set(adata, GENES)
    spots = attach_her2st_patches(spots, her2st_dir, "C3", 112.0, 64, tmp_path_factory.mktemp("cache"))
    return spots.subset(np.arange(len(spots)) < 64)


def test_patches_are_read_at_spot_centres(small_set):
    assert small_set.patches.shape == (64, 64, 64, 3) and small_set.patches.dtype == np.uint8
    # spots lie on tissue: patches are stained, not glass
    assert small_set.patches.reshape(64, -1).mean(1).max() < 235


@pytest.mark.slow
def test_loss_falls_over_a_few_steps(small_set):
    torch.manual_seed(0)
    model = create_model(ModelConfig(n_genes=len(GENES), img_size=64))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.from_numpy(small_set.patches[:32]).permute(0, 3, 1, 2).float() / 255
    e = torch.from_numpy(small_set.expression[:32])
    losses = []
    for _ in range(12):
        out = model(x, e)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(float(out["loss"]))
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) * 0.9, losses


def _cfg(her2st_dir, tmp_path, epochs=2):
    return TrainConfig(
        train_sections=["C3"],
        her2st=str(her2st_dir),
        benchmark_genes=None,
        genes=GENES,
        model=ModelConfig(backbone="resnet10t"),
        io=IOContract(patch_um=112.0, input_px=48),
        epochs=epochs,
        batch_size=64,
        cache_dir=str(tmp_path / "cache"),
        device="cpu",
    )


@pytest.mark.slow
def test_training_is_seeded_and_deterministic_on_cpu(her2st_dir, tmp_path):
    a = load_model(train(_cfg(her2st_dir, tmp_path, 1), tmp_path / "a"), device="cpu")
    b = load_model(train(_cfg(her2st_dir, tmp_path, 1), tmp_path / "b"), device="cpu")
    for (k, va), vb in zip(a.network.state_dict().items(), b.network.state_dict().values()):
        assert torch.equal(va, vb), k
    assert (tmp_path / "a" / "config.yaml").exists()


@pytest.mark.slow
def test_training_resumes_after_an_interrupt(her2st_dir, tmp_path):
    cfg = _cfg(her2st_dir, tmp_path, 2)
    gen = iter_train(cfg, tmp_path / "run")
    for progress in gen:  # stop ("interrupt") once the first epoch is saved
        if progress["stage"] == "train" and progress["epoch"] == 2:
            break
    gen.close()
    assert (tmp_path / "run" / "state.pt").exists() and not (tmp_path / "run" / "model.pt").exists()
    stages = list(iter_train(_cfg(her2st_dir, tmp_path, 2), tmp_path / "run"))
    assert {"stage": "resume", "epoch": 1} in stages
    assert all(p["epoch"] == 2 for p in stages if p["stage"] == "train")
    uninterrupted = load_model(train(_cfg(her2st_dir, tmp_path, 2), tmp_path / "straight"), device="cpu")
    resumed = load_model(tmp_path / "run" / "model.pt", device="cpu")
    for (k, va), vb in zip(uninterrupted.network.state_dict().items(), resumed.network.state_dict().values()):
        assert torch.allclose(va, vb, atol=1e-3), k


def test_bad_training_config_names_the_key(tmp_path):
    from napari_stpredict.training.train import load_train_config

    path = tmp_path / "cfg.yaml"
    path.write_text("epochs: 3\nlearning_rate: 0.1\n")
    with pytest.raises(ValueError, match="cfg.yaml.*learning_rate"):
        load_train_config(path)


def test_marker_panel_from_real_labels(her2st_dir):
    from napari_stpredict.training.genes import HER2_AMPLICON, select_marker_panel

    adatas = [her2st_section(str(her2st_dir), s) for s in ("C3", "C4", "B1")]
    candidates = sorted(set(adatas[0].var_names) & set(adatas[1].var_names) & set(adatas[2].var_names))
    markers = select_marker_panel(adatas, candidates, n_markers=8)
    assert len(markers["panel"]) >= 8 and markers["sections"] == ["C3", "C4", "B1"]
    assert "ERBB2" in markers["panel"]  # HER2-positive tumour: the amplicon is enriched in cancer spots
    assert all(markers["effect"][g] > 0.3 for g in markers["panel"])
    assert set(HER2_AMPLICON) & set(markers["panel"])


@pytest.mark.slow
def test_rebuild_bank_keeps_weights_and_changes_only_the_bank(her2st_dir, tmp_path):
    from napari_stpredict.training.bank import rebuild_bank

    ckpt = train(_cfg(her2st_dir, tmp_path, 1), tmp_path / "run")
    before = load_model(ckpt, device="cpu")
    out = rebuild_bank(ckpt, tmp_path / "rebuilt.pt", bank_sections=["C4"], her2st=str(her2st_dir))
    after = load_model(out, device="cpu")
    assert len(after.bank) > len(before.bank) and after.provenance["bank_sections"] == ["C4"]
    for (k, a), b in zip(before.network.state_dict().items(), after.network.state_dict().values()):
        assert torch.equal(a, b), k
    assert torch.allclose(after.bank.expression[: len(before.bank)], before.bank.expression, atol=1e-2)


def test_training_length_counts_steps_not_epochs():
    from napari_stpredict.training.train import training_length

    # 450 steps: 30 passes over ~1,000 spots (15 batches), 113 over one 283-spot section (4)
    assert training_length(TrainConfig(steps=450), 15) == (450, 30)
    assert training_length(TrainConfig(steps=450), 4) == (450, 113)
    assert training_length(TrainConfig(epochs=30), 4) == (120, 30)
    with pytest.raises(ValueError, match="steps"):
        training_length(TrainConfig(steps=0), 4)


@pytest.mark.slow
def test_a_step_budget_ends_mid_epoch(her2st_dir, tmp_path):
    # C3 has 180 spots: 2 batches of 64 a pass, so step 3 is the first of pass 2
    cfg = replace(_cfg(her2st_dir, tmp_path, epochs=99), steps=3)
    progress = [p for p in iter_train(cfg, tmp_path / "run") if p["stage"] == "train"]
    assert [p["global_step"] for p in progress] == [1, 2, 3]
    assert [p["epoch"] for p in progress] == [1, 1, 2] and progress[-1]["total_steps"] == 3
    model = load_model(tmp_path / "run" / "model.pt", device="cpu")
    assert model.provenance["steps"] == 3 and model.provenance["epochs"] == 2


def test_command_line_epochs_replace_a_configured_step_budget(tmp_path):
    from napari_stpredict.cli import build_parser
    from napari_stpredict.cli.train import _train_overrides
    from napari_stpredict.training.train import load_train_config, training_length

    path = tmp_path / "cfg.yaml"
    path.write_text("steps: 450\n")
    parse = build_parser().parse_args
    by_epochs = load_train_config(path, _train_overrides(parse(["train", "--config", str(path), "--epochs", "3"])))
    assert training_length(by_epochs, 15) == (45, 3)
    by_steps = load_train_config(path, _train_overrides(parse(["train", "--config", str(path), "--steps", "7"])))
    assert training_length(by_steps, 15) == (7, 1)
    assert training_length(load_train_config(path, _train_overrides(parse(["train", "--config", str(path)]))), 15) == (
        450,
        30,
    )


def test_coarse_scan_blurs_chosen_patches_like_a_coarser_scan():
    """The resolution augmentation: nothing at share 0; at share 1 every patch loses the fine
    detail a 3x coarser scan lacks and keeps its colour; the config refuses bad values."""
    import torch

    from napari_stpredict.training.augment import coarse_scan
    from napari_stpredict.training.train import TrainConfig, check_train_config

    gen = torch.Generator().manual_seed(0)
    x = torch.rand(8, 3, 64, 64, generator=gen)  # noise: all detail is fine detail
    assert coarse_scan(x, 0.0, 3.2, generator=gen) is x
    out = coarse_scan(x, 1.0, 3.2, generator=gen)
    assert out.shape == x.shape and float(out.min()) >= 0 and float(out.max()) <= 1

    def detail(t):
        return float((t[..., 1:] - t[..., :-1]).abs().mean())

    assert detail(out) < 0.6 * detail(x)
    assert torch.allclose(out.mean(dim=(2, 3)), x.mean(dim=(2, 3)), atol=0.02)
    for key, bad in (("coarse_scan", 1.5), ("coarse_scan", -0.1), ("coarse_max_ratio", 0.5)):
        with pytest.raises(ValueError, match=key):
            check_train_config(TrainConfig(**{key: bad}))


def test_counter_panel_is_the_genes_most_depleted_in_cancer(her2st_dir):
    """The contrast score's other side: genes of the model's list whose cancer-minus-other
    effect is most negative on the training sections, none of them a marker."""
    from napari_stpredict.training.genes import select_counter_panel, select_marker_panel

    adatas = [her2st_section(str(her2st_dir), s) for s in ("C3", "C4", "B1")]
    genes = sorted(set(adatas[0].var_names) & set(adatas[1].var_names) & set(adatas[2].var_names))
    counter = select_counter_panel(adatas, genes, n_genes=8)
    markers = select_marker_panel(adatas, genes, n_markers=8)
    assert len(counter["panel"]) == 8 and set(counter["panel"]) <= set(genes)
    assert not set(counter["panel"]) & set(markers["panel"])
    effects = [counter["effect"][g] for g in counter["panel"]]
    assert effects == sorted(effects) and max(effects) < -0.3  # most depleted first, clearly depleted
    # and it follows the gene list it is given: a list without those genes gets others
    fewer = [g for g in genes if g not in counter["panel"]]
    assert not set(select_counter_panel(adatas, fewer, n_genes=8)["panel"]) & set(counter["panel"])
