"""The shipped model: loads offline, meets its budgets, and predicts ERBB2 on the held-out sample."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_stpredict.model import default_model_path, load_model


def test_default_model_loads_and_fits_the_budget():
    model = load_model(device="cpu")
    assert default_model_path().stat().st_size <= 30 * 2**20
    assert "ERBB2" in model.genes and len(model.genes) >= 785
    prov = model.provenance
    assert "C2" not in prov["train_sections"] and "C2" not in prov["bank_sections"]  # the sample is held out
    assert model.evaluation, "the shipped model carries its evaluation figures"


REPO = Path(__file__).resolve().parents[2]
TRUST = REPO / "evaluation" / "experiments" / "trust"


@pytest.fixture(scope="module")
def sample_prediction(sample_slide_path):
    """The bundled model's prediction of the bundled sample at the default settings."""
    from napari_stpredict.inference import run_prediction
    from napari_stpredict.io.slide import open_slide

    with open_slide(sample_slide_path) as slide:
        return run_prediction(slide, load_model(device="cpu"))


@pytest.mark.slow
def test_predicted_erbb2_map_follows_measured_erbb2_on_the_sample(sample_prediction, sample_spots_path):
    import anndata as ad

    from napari_stpredict.training.data import log1p_cp10k

    spots = ad.read_h5ad(sample_spots_path)
    measured = log1p_cp10k(spots, [spots.var_names.get_loc("ERBB2")]).ravel()
    values = sample_prediction.heatmap("ERBB2").sample(spots.obsm["spatial"])
    ok = np.isfinite(values)
    assert ok.mean() > 0.9
    r = np.corrcoef(values[ok], measured[ok])[0, 1]
    assert r > 0.2, f"predicted vs measured ERBB2 on the held-out sample: r = {r:.2f}"


def test_shipped_model_carries_the_committed_evaluation_and_recipe():
    """The checkpoint's embedded figures are the committed results, its retrieval settings
    are the evaluated recipe's, and the README quotes the 3-seed headline."""
    import json

    import yaml

    results = REPO / "evaluation" / "results"
    model = load_model(device="cpu")
    summary = json.loads((results / "full" / "summary.json").read_text(encoding="utf-8"))
    assert {k: model.evaluation[k] for k in summary} == summary
    seeds = json.loads((results / "seeds.json").read_text(encoding="utf-8"))
    assert model.evaluation["seeds"]["rows"] == seeds
    recipe = yaml.safe_load((REPO / "evaluation" / "config.yaml").read_text(encoding="utf-8"))["train"]
    assert model.retrieval.top_k == recipe["top_k"]
    assert model.retrieval.context_sigma_um == recipe["context_sigma_um"]
    headline = seeds["cmrcnet:retrieval"]
    quoted = f"{headline['mean']['r_heg50']:.3f} ± {headline['sd']['r_heg50']:.3f}"
    assert quoted in (REPO / "README.md").read_text(encoding="utf-8")


@pytest.mark.slow
def test_readme_trust_figures_are_the_bundled_models(sample_prediction):
    """The README's trust section quotes the shipped model, not an earlier one: its calibrated
    threshold, the committed verdict table (whose sample row is this prediction) and the
    held-out table made from the committed fold results (issue 19 found all three stale)."""
    import importlib.util
    import json

    from napari_stpredict.inference.tumor import tumor_mask

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    mask = tumor_mask(sample_prediction)
    assert mask.mode == "absolute" and mask.automatic
    assert f"bundled model: {mask.threshold:.2f}," in readme
    assert f"(threshold {mask.describe()})" in readme  # the command-line example

    verdicts = json.loads((TRUST / "verdicts.json").read_text(encoding="utf-8"))
    sample_row = next(r for r in verdicts if r["image"].startswith("her2st C2"))
    assert sample_row["spots"] == len(sample_prediction)
    assert abs(sample_row["tumour_default"] - mask.fraction) < 0.01
    assert f"tumour {mask.fraction:.0%} of tissue" in readme

    spec = importlib.util.spec_from_file_location("trust_summarise", TRUST / "summarise.py")
    summarise = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(summarise)
    held_out = summarise.table(REPO / "evaluation" / "results" / "full")
    assert held_out == (TRUST / "trust.md").read_text(encoding="utf-8")
    tables = (TRUST / "verdicts.md").read_text(encoding="utf-8").splitlines() + held_out.splitlines()
    headers = ("| image |", "| fold (trained on) |")
    for row in (line for line in tables if line.startswith("| ") and not line.startswith(headers)):
        assert row in readme, f"README lacks the committed row: {row}"
