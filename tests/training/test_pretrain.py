"""Self-supervised pretraining of the image encoder (issue 19, item 3) on real H&E files:
tiles of the listed images only (the excluded never), a resumable run whose resumed result
equals the uninterrupted one, and an encoder a training starts from."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from napari_stpredict.training.pretrain import PretrainConfig, iter_pretrain, load_encoder, nt_xent


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, wsi_dir, her2st_dir) -> PretrainConfig:
    a1 = her2st_dir / "app_imgs" / "A1_HE_image_dark.png"
    return PretrainConfig(
        images=[f"{a1}@3.2", str(wsi_dir / "CMU-1-Small-Region.svs")],
        exclude=[str(wsi_dir / "CMU-1-Small-Region.svs")],
        her2st=str(her2st_dir),
        tiles_per_image=24,
        steps=4,
        batch_size=8,
        checkpoint_every=2,
        out_dir=str(tmp_path_factory.mktemp("unused")),
        cache_dir=str(tmp_path_factory.mktemp("cache")),
    )


def _weights(path):
    import torch

    return torch.load(path, weights_only=True)["state_dict"]


@pytest.mark.slow
def test_a_resumed_pretraining_ends_where_an_uninterrupted_one_does(tiny, tmp_path):
    from napari_stpredict._progress import drain

    whole = drain(iter_pretrain(tiny, tmp_path / "whole"))
    summary = json.loads((tmp_path / "whole" / "pretrain.json").read_text())
    # the excluded image (a fold's held-out section) is never tiled
    assert [entry["image"] for entry in summary["images"]] == [tiny.images[0]] and summary["steps"] == 4
    assert summary["excluded"] == tiny.exclude

    run = iter_pretrain(tiny, tmp_path / "interrupted")
    for event in run:
        if event.get("global_step") == 2:  # the state was saved at step 2
            break
    run.close()  # as Ctrl-C would stop it
    assert not (tmp_path / "interrupted" / "encoder.pt").exists()  # no encoder from a half run
    events = []
    resumed = drain(iter_pretrain(tiny, tmp_path / "interrupted"), events.append)
    assert {"stage": "resume", "global_step": 2} in events
    assert [e["global_step"] for e in events if e["stage"] == "train"] == [3, 4]
    a, b = _weights(whole), _weights(resumed)
    assert a.keys() == b.keys() and all(np.allclose(a[k].numpy(), b[k].numpy(), atol=1e-5) for k in a)


@pytest.mark.slow
def test_a_time_budget_pauses_cleanly_and_the_rerun_goes_on(tiny, tmp_path):
    from napari_stpredict._progress import drain

    events = []
    assert drain(iter_pretrain(replace(tiny, max_seconds=1e-6), tmp_path / "run"), events.append) is None
    assert events[-1]["stage"] == "paused" and (tmp_path / "run" / "state.pt").exists()
    assert drain(iter_pretrain(tiny, tmp_path / "run")).name == "encoder.pt"  # the budget is not the recipe


@pytest.mark.slow
def test_a_training_starts_from_the_pretrained_encoder(tiny, tmp_path):
    import torch

    from napari_stpredict._progress import drain
    from napari_stpredict.model import create_model
    from napari_stpredict.model.config import ModelConfig
    from napari_stpredict.training.config import TrainConfig, check_train_config, recipe_fields

    encoder = drain(iter_pretrain(tiny, tmp_path / "run"))
    model = create_model(ModelConfig(backbone="resnet10t", n_genes=5, img_size=112))
    load_encoder(encoder, model.backbone, "resnet10t")
    for key, value in _weights(encoder).items():
        assert torch.equal(model.backbone.state_dict()[key], value)
    with pytest.raises(ValueError, match="pretrained for backbone 'resnet10t', not 'resnet18'"):
        load_encoder(encoder, create_model(ModelConfig(backbone="resnet18", n_genes=5)).backbone, "resnet18")
    # the recipe names the weights (their SHA-1), not the path: results of another encoder are never mixed
    moved = tmp_path / "moved.pt"
    moved.write_bytes(encoder.read_bytes())
    assert (
        recipe_fields(TrainConfig(init_encoder=str(encoder)))["init_encoder"]
        == recipe_fields(TrainConfig(init_encoder=str(moved)))["init_encoder"]
    )
    assert "init_encoder" not in recipe_fields(TrainConfig())  # earlier fingerprints unchanged
    with pytest.raises(ValueError, match="init_encoder: .*no such file"):
        check_train_config(TrainConfig(init_encoder=str(tmp_path / "missing.pt"), her2st=tiny.her2st))


def test_bad_pretraining_configs_are_one_line_naming_the_key(tiny, tmp_path, capsys):
    from napari_stpredict.cli import main

    cases = {
        "images: [C2]\nexclude: [C2]\n": "images: no image left",
        "images: [nowhere.svs]\n": "nowhere.svs: file not found",
        "images: [C2]\nbatch_size: 1\n": "batch_size must be at least 2",
        "images: [C2]\nsteps: 0\n": "steps must be a whole number",
        "images: [C2]\nepochs: 3\n": "unknown pretraining config keys: epochs",
    }
    for body, message in cases.items():
        path = tmp_path / "bad.yaml"
        path.write_text(f"her2st: {tiny.her2st}\n{body}", encoding="utf-8")
        assert main(["pretrain", "--config", str(path), "--out", str(tmp_path / "run")]) == 2
        err = capsys.readouterr().err
        assert message in err and str(path) in err and "Traceback" not in err, err
    assert not (tmp_path / "run").exists()  # nothing made before the config was checked


def test_nt_xent_rewards_views_of_the_same_tile():
    import torch

    g = torch.Generator().manual_seed(0)
    z = torch.randn(16, 8, generator=g)
    same = nt_xent(z, z + 0.01 * torch.randn(16, 8, generator=g), 0.2)
    other = nt_xent(z, torch.randn(16, 8, generator=g), 0.2)
    assert same < other and same < np.log(31)  # 2B-1 candidates: chance is log(31)


@pytest.mark.parametrize("fold", ["test_B", "test_C"])
def test_the_fold_configs_load_and_leave_their_held_out_sections_out(fold, monkeypatch):
    from napari_stpredict.training.pretrain import load_pretrain_config
    from napari_stpredict.training.protocol import PROTOCOLS

    repo = Path(__file__).resolve().parents[2]
    monkeypatch.chdir(repo)  # the configs name ../shared/data from the repository root
    cfg = load_pretrain_config(repo / "evaluation" / "experiments" / "pretrain" / f"pretrain_{fold}.yaml")
    held_out = set(PROTOCOLS["patient"]["folds"][fold]["test"])
    assert held_out <= set(cfg.exclude)
    assert not held_out & {spec for spec in cfg.images if spec not in cfg.exclude}
