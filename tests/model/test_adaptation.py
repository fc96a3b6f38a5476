"""Per-slide adaptation (issue 19): the rule, the checkpoint setting, the calibration."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_stpredict.model.adaptation import MIN_PATCHES, FeatureStats, estimate_adaptation


def _features(n, d=16, shift=0.0, scale=1.0, seed=0):
    rng = np.random.default_rng(seed)
    return torch.from_numpy((rng.normal(size=(n, d)) * scale + shift).astype(np.float32))


def test_standardise_maps_the_slides_statistics_onto_the_training_ones():
    target = FeatureStats.of(_features(500, seed=1))
    slide = _features(300, shift=3.0, scale=2.5, seed=2)
    adapted = estimate_adaptation(slide, target, "standardise").apply(slide)
    got = FeatureStats.of(adapted)
    assert torch.allclose(got.mean, target.mean, atol=1e-4)
    assert torch.allclose(got.sd, target.sd, atol=1e-4)


def test_centre_only_moves_the_mean_and_records_how_far():
    target = FeatureStats.of(_features(500, seed=1))
    slide = _features(300, shift=3.0, scale=2.5, seed=2)
    adaptation = estimate_adaptation(slide, target, "centre")
    adapted = adaptation.apply(slide)
    assert torch.allclose(adapted.mean(0), target.mean, atol=1e-4)
    assert torch.allclose(adapted.std(0, unbiased=False), slide.std(0, unbiased=False), atol=1e-4)
    assert adaptation.shift_size == pytest.approx(3.0, abs=0.3)  # moved by ~3 training sds
    assert adaptation.summary()["n_patches"] == 300
    same = estimate_adaptation(_features(400, seed=1), target, "centre")
    assert same.shift_size < 0.2


def test_no_adaptation_for_none_or_too_few_patches_and_bad_modes_are_named():
    target = FeatureStats.of(_features(100))
    assert estimate_adaptation(_features(200), target, "none") is None
    assert estimate_adaptation(_features(MIN_PATCHES - 1), target, "standardise") is None
    with pytest.raises(ValueError, match="adaptation must be one of none, centre, standardise, got 'adabn'"):
        estimate_adaptation(_features(200), target, "adabn")


def test_a_near_constant_feature_is_not_blown_up():
    target = FeatureStats.of(_features(500, seed=1))
    slide = _features(300, seed=2)
    slide[:, 0] = 0.5  # constant on this slide
    adaptation = estimate_adaptation(slide, target, "standardise")
    assert adaptation.scale[0] == 1.0 and torch.isfinite(adaptation.apply(slide)).all()


def test_the_checkpoint_carries_the_setting_and_refuses_bad_ones(tmp_path, tiny_model_path):
    from napari_stpredict.model import load_model, read_checkpoint
    from napari_stpredict.model.checkpoint import CheckpointError

    assert load_model(tiny_model_path, device="cpu").retrieval.adaptation == "none"  # older files: off
    data = torch.load(tiny_model_path, map_location="cpu", weights_only=True)
    data["retrieval"] = {"top_k": 50, "context_sigma_um": 0.0, "adaptation": "standardise"}
    good = tmp_path / "adapt.pt"
    torch.save(data, good)
    assert read_checkpoint(good)["retrieval"].adaptation == "standardise"
    data["retrieval"]["adaptation"] = "magic"
    bad = tmp_path / "bad.pt"
    torch.save(data, bad)
    with pytest.raises(CheckpointError, match=r"bad\.pt.*retrieval\.adaptation must be one of"):
        read_checkpoint(bad)


def test_training_statistics_come_from_the_raw_reference_features():
    from napari_stpredict.model import load_model

    model = load_model(device="cpu")  # the bundled model: calibrated
    raw = torch.load(model_path(), map_location="cpu", weights_only=True)["calibration"]["domain"]["reference"]
    stats = model.training_feature_stats
    assert stats.n == raw.shape[0]
    assert torch.allclose(stats.mean, raw.float().mean(0), atol=1e-4)  # not the normalised copy
    assert float(stats.sd.mean()) > 0.01


def model_path():
    from napari_stpredict.model import default_model_path

    return default_model_path()
