"""Metrics, and the evaluation protocol's rule that nothing of a held-out patient is used."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from napari_stpredict.training.metrics import gene_gene_agreement, panel_zscore, pearson_per_gene, roc_auc, top_genes
from napari_stpredict.training.protocol import PROTOCOLS, EvalConfig, fold_recipe, fold_train_config, result_is_current
from napari_stpredict.training.report import agreement_table, markdown_table
from napari_stpredict.training.train import TrainConfig


def test_pearson_per_gene():
    rng = np.random.default_rng(0)
    true = rng.normal(size=(100, 3))
    pred = np.stack([true[:, 0], -true[:, 1], np.ones(100)], 1)
    r = pearson_per_gene(pred, true)
    assert r[0] == pytest.approx(1) and r[1] == pytest.approx(-1) and np.isnan(r[2])


def test_roc_auc_matches_definition():
    assert roc_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == pytest.approx(0.75)
    assert roc_auc(np.array([1, 1, 1, 1.0]), np.array([0, 1, 0, 1])) == pytest.approx(0.5)
    assert np.isnan(roc_auc(np.array([1.0, 2.0]), np.array([1, 1])))


def test_gene_sets_and_scores():
    expr = np.array([[1, 5, 0], [1, 7, 3], [1, 6, 9.0]])
    assert top_genes(expr, ["a", "b", "c"], 1, by="mean") == ["b"]
    assert top_genes(expr, ["a", "b", "c"], 1, by="var") == ["c"]
    rng = np.random.default_rng(1)
    base = rng.normal(size=(60, 4))
    correlated = np.column_stack([base[:, 0], base[:, 0] + 0.1 * base[:, 1], base[:, 2], base[:, 2] - base[:, 3]])
    assert gene_gene_agreement(correlated, correlated) == pytest.approx(1.0)
    assert gene_gene_agreement(correlated, rng.normal(size=(60, 4))) < 0.9
    score = panel_zscore(expr, ["a", "b", "c"], ["b", "c"])
    assert score.shape == (3,) and score[0] < score[2]


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
def test_folds_keep_the_held_out_patient_out(her2st_dir, protocol):
    cfg = EvalConfig(train=TrainConfig(her2st=str(her2st_dir)))
    for fold, spec in PROTOCOLS[protocol]["folds"].items():
        tc = fold_train_config(cfg, protocol, fold, "cmrcnet", quick=False)
        used = set(tc.train_sections) | set(tc.bank_sections) | set(tc.marker_sections)
        assert not used & set(spec["test"]), fold
        if spec["patient"] is not None:  # patient-level: no section of that patient anywhere
            assert not any(s.startswith(spec["patient"]) for s in used), fold


def test_markdown_table_lists_methods_and_ceiling():
    summary = {
        "patient": {
            "label": "patient-level folds (headline)",
            "tumor_auc_ceiling_measured": 0.9,
            "methods": {
                "cmrcnet:retrieval": {
                    "r_heg50": 0.1,
                    "r_hvg50": 0.2,
                    "r_markers": 0.3,
                    "r_all": 0.05,
                    "gene_gene": 0.4,
                    "tumor_auc": 0.7,
                    "n_sections": 6,
                    "sections": [],
                }
            },
        }
    }
    table = markdown_table(summary)
    row = "CMRCNet, retrieval, bank + other patients' count-only spots | 0.100 | 0.200 | 0.300 | 0.050 | 0.400 | 0.700"
    assert row in table
    assert "ceiling" in table and "6 held-out sections" in table


def _summary(heg50: float, auc: float) -> dict:
    row = {
        "r_heg50": heg50,
        "r_hvg50": 0.2,
        "r_markers": 0.3,
        "r_all": 0.05,
        "gene_gene": 0.4,
        "tumor_auc": auc,
        "n_sections": 6,
        "sections": [],
    }
    return {"patient": {"label": "patient-level folds (headline)", "methods": {"cmrcnet:retrieval": row}}}


def test_agreement_table_reports_the_largest_difference():
    close = agreement_table(_summary(0.12, 0.75), _summary(0.10, 0.76))
    assert "| +0.020 | +0.000 | +0.000 | +0.000 | +0.000 | -0.010 |" in close
    assert "Largest absolute difference: 0.020 (within ±0.03)" in close
    far = agreement_table(_summary(0.12, 0.70), _summary(0.10, 0.76))
    assert "0.060 (NOT within ±0.03)" in far


def test_quick_setting_sets_the_step_budget():
    cfg = EvalConfig(quick_steps=123, train=TrainConfig(steps=450))  # frozen: built with its settings
    assert fold_train_config(cfg, "patient", "test_C", "cmrcnet", quick=True).steps == 123
    assert fold_train_config(cfg, "patient", "test_C", "cmrcnet", quick=False).steps == 450


def test_results_of_another_recipe_are_neither_reused_nor_overwritten(tmp_path):
    cfg = EvalConfig(quick_steps=123, train=TrainConfig(steps=450))  # frozen: built with its settings
    full = fold_recipe(cfg, "patient", "test_C", "cmrcnet", quick=False)
    quick = fold_recipe(cfg, "patient", "test_C", "cmrcnet", quick=True)
    assert full == fold_recipe(cfg, "patient", "test_C", "cmrcnet", quick=False)
    assert (
        len(
            {
                full,
                quick,
                fold_recipe(cfg, "patient", "test_C", "contrastive", quick=False),
                fold_recipe(cfg, "patient", "test_B", "cmrcnet", quick=False),
            }
        )
        == 4
    )
    cfg = replace(cfg, train=replace(cfg.train, out_dir="elsewhere"))  # where outputs go is not part of the recipe
    assert fold_recipe(cfg, "patient", "test_C", "cmrcnet", quick=False) == full
    # retrieval settings change the results (a new recipe) but not the training: a run
    # folder's finished training is reused
    from napari_stpredict.training.train import _config_hash

    trained = _config_hash(fold_train_config(cfg, "patient", "test_C", "cmrcnet", quick=False))
    cfg = replace(cfg, train=replace(cfg.train, context_sigma_um=56.0))
    assert fold_recipe(cfg, "patient", "test_C", "cmrcnet", quick=False) != full
    assert _config_hash(fold_train_config(cfg, "patient", "test_C", "cmrcnet", quick=False)) == trained
    cfg = replace(cfg, train=replace(cfg.train, context_sigma_um=0.0))
    cfg = replace(cfg, train=replace(cfg.train, seed=1))
    assert fold_recipe(cfg, "patient", "test_C", "cmrcnet", quick=False) != full

    path = tmp_path / "cmrcnet.json"
    assert not result_is_current(path, full)
    path.write_text(json.dumps({"recipe": full, "results": {}}), encoding="utf-8")
    assert result_is_current(path, full)
    with pytest.raises(ValueError, match="another training recipe") as err:
        result_is_current(path, quick)
    assert str(path) in str(err.value)
    assert json.loads(path.read_text(encoding="utf-8"))["recipe"] == full  # left as it was
    path.write_text(json.dumps({"results": {}}), encoding="utf-8")  # written before recipes were recorded
    assert result_is_current(path, quick, steps=123)
    path.write_text(json.dumps({"training_length": {"steps": 300}}), encoding="utf-8")  # ... but with a step count
    assert result_is_current(path, quick, steps=300)
    with pytest.raises(ValueError, match="300 steps, now 123 steps"):
        result_is_current(path, quick, steps=123)
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="unreadable"):
        result_is_current(path, full)


def test_evaluate_refuses_to_mix_in_results_of_another_step_budget(her2st_dir, tmp_path, capsys):
    from napari_stpredict.cli import main

    out = tmp_path / "results"
    config = tmp_path / "eval.yaml"
    config.write_text(
        f"out_dir: {out.as_posix()}\nrun_dir: {(tmp_path / 'runs').as_posix()}\nquick_steps: 400\n"
        f"train:\n  her2st: {her2st_dir.as_posix()}\n  steps: 450\n",
        encoding="utf-8",
    )
    stale = out / "quick" / "patient" / "test_B" / "untrained.json"
    stale.parent.mkdir(parents=True)
    stale.write_text(json.dumps({"training_length": {"steps": 300}, "results": {}}), encoding="utf-8")
    code = main(
        [
            "evaluate",
            "--config",
            str(config),
            "--quick",
            "--protocol",
            "patient",
            "--fold",
            "test_B",
            "--variant",
            "untrained",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "untrained.json" in err and "300 steps, now 400 steps" in err
    assert json.loads(stale.read_text(encoding="utf-8"))["training_length"]["steps"] == 300


def test_seed_table_averages_sections_then_seeds(tmp_path):
    """Each seed's row is the mean over its held-out sections (both folds); the table is
    mean ± sd over seeds; ablation rows come from the same files."""
    from napari_stpredict.training.report import seed_summary, seed_table

    def write(seed, fold, sections, value):
        scores = dict.fromkeys(("r_heg50", "r_hvg50", "r_markers", "r_all", "gene_gene", "tumor_auc"), value)
        record = {
            "results": {"retrieval": dict.fromkeys(sections, scores)},
            "ablation": {"k50_ctx0": {s: {**scores, "r_heg50": value - 0.1} for s in sections}},
        }
        path = tmp_path / f"seed{seed}" / "patient" / fold / "cmrcnet.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(record), encoding="utf-8")

    write(0, "test_B", ["B4"], 0.1)
    write(0, "test_C", ["C2", "C3"], 0.4)  # seed 0: (0.1 + 0.4 + 0.4) / 3 = 0.3
    write(1, "test_B", ["B4"], 0.5)
    write(1, "test_C", ["C2", "C3"], 0.5)  # seed 1: 0.5
    summary = seed_summary({0: tmp_path / "seed0", 1: tmp_path / "seed1"})
    row = summary["cmrcnet:retrieval"]
    assert row["per_seed"][0]["r_heg50"] == pytest.approx(0.3)
    assert row["mean"]["r_heg50"] == pytest.approx(0.4) and row["sd"]["r_heg50"] == pytest.approx(0.1414, abs=1e-4)
    assert summary["ablation:k50_ctx0"]["mean"]["r_heg50"] == pytest.approx(0.3)
    table = seed_table(summary)
    assert "| CMRCNet, retrieval (the shipped recipe) | 2 | 0.400 ± 0.141 |" in table
    assert "ablation: top-k 50, no context" in table
    # the row of the recipe without one of its changes (its own trainings), before the retrieval ablation
    summary["without:pretraining"] = summary["ablation:k50_ctx0"]
    lines = seed_table(summary).splitlines()
    assert lines[3].startswith("| ablation: without pretraining | 2 | 0.300 ± 0.141 |")
    assert lines[4].startswith("| ablation: top-k 50, no context |")


def test_seed_table_script_reads_the_loso_folds_and_a_one_seed_ablation(tmp_path):
    """``scripts/seed_table.py --protocol loso_C``: each seed's row is the mean over C2-C6's
    folds, the patient folds beside them are not read, the ablation run on seed 0 only shows
    1 seed, and the table is written as seeds_loso_C.md without touching seeds.md."""
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[2] / "scripts" / "seed_table.py"
    metrics = ("r_heg50", "r_hvg50", "r_markers", "r_all", "gene_gene", "tumor_auc")

    def write(root, seed, protocol, section, value):
        full = root / "full" if seed == 0 else root / "seeds" / f"seed{seed}" / "full"
        path = full / protocol / f"test_{section}" / "cmrcnet.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        record = {"results": {"retrieval": {section: dict.fromkeys(metrics, value)}}}
        path.write_text(json.dumps(record), encoding="utf-8")

    recipe, without = tmp_path / "recipe", tmp_path / "without"
    for seed, values in {0: (0.2, 0.4), 1: (0.3, 0.5), 2: (0.4, 0.6)}.items():
        for section, value in zip(("C2", "C3"), values, strict=True):
            write(recipe, seed, "loso_C", section, value)
        write(recipe, seed, "patient", "B4", 0.9)  # another protocol: must not enter the mean
    write(without, 0, "loso_C", "C2", 0.1)
    write(without, 0, "loso_C", "C3", 0.2)
    args = [sys.executable, str(script), "--results", str(recipe), "--protocol", "loso_C"]
    done = subprocess.run([*args, "--without", f"pretraining={without}"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    table = (recipe / "seeds_loso_C.md").read_text(encoding="utf-8")
    assert "| CMRCNet, retrieval (the shipped recipe) | 3 | 0.400 ± 0.100 |" in table
    assert "| ablation: without pretraining | 1 | 0.150 |" in table
    assert not (recipe / "seeds.md").exists()
    # a recipe folder lacking a seed is refused, naming the folder
    missing = subprocess.run([*args[:3], str(without), *args[4:]], capture_output=True, text=True)
    assert missing.returncode != 0 and "seed1" in missing.stderr


def _per_fold_config(tmp_path, encoder: str) -> Path:
    import yaml

    her2st = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "her2st"
    path = tmp_path / "eval.yaml"
    config = {
        "out_dir": str(tmp_path / "results"),
        "run_dir": str(tmp_path / "runs"),
        "train": {"her2st": str(her2st), "steps": 5, "init_encoder": encoder},
    }
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def test_a_per_fold_encoder_is_the_folds_own_and_only_the_trained_variants_use_it(tmp_path):
    """``{fold}`` in init_encoder names each fold's pretrained encoder; the baselines train no
    encoder, so their results (and fingerprints) do not depend on it."""
    cfg = EvalConfig.from_yaml(_per_fold_config(tmp_path, str(tmp_path / "pretrain" / "{fold}" / "encoder.pt")))
    for fold in ("test_B", "test_C"):
        expected = str(tmp_path / "pretrain" / fold / "encoder.pt")
        assert fold_train_config(cfg, "patient", fold, "cmrcnet", quick=False).init_encoder == expected
        assert fold_train_config(cfg, "patient", fold, "ridge_features", quick=False).init_encoder is None
    plain = replace(cfg, train=replace(cfg.train, init_encoder=None))
    assert fold_recipe(cfg, "patient", "test_B", "untrained", False) == fold_recipe(
        plain, "patient", "test_B", "untrained", False
    )
    assert fold_recipe(cfg, "patient", "test_B", "cmrcnet", False) != fold_recipe(
        plain, "patient", "test_B", "cmrcnet", False
    )
    # the weights count, not where they lie: two encoders' files give two recipes
    for fold, content in (("test_B", b"one"), ("test_C", b"two")):
        target = tmp_path / "pretrain" / fold / "encoder.pt"
        target.parent.mkdir(parents=True)
        target.write_bytes(content)
    before = fold_recipe(cfg, "patient", "test_B", "cmrcnet", False)
    (tmp_path / "pretrain" / "test_B" / "encoder.pt").write_bytes(b"retrained")
    assert fold_recipe(cfg, "patient", "test_B", "cmrcnet", False) != before


def test_a_missing_fold_encoder_stops_the_evaluation_before_any_training(tmp_path):
    from napari_stpredict.training.evaluate import iter_evaluate

    cfg = EvalConfig.from_yaml(_per_fold_config(tmp_path, str(tmp_path / "pretrain" / "{fold}" / "encoder.pt")))
    with pytest.raises(ValueError, match="fold test_B: init_encoder .*test_B.*no such file") as err:
        next(iter_evaluate(cfg, protocols=["patient"], variants=["cmrcnet"]))
    assert "fold test_C" in str(err.value)  # every missing encoder at once
    assert not (tmp_path / "results").exists() and not (tmp_path / "runs").exists()
    # baselines need no encoder: planning them alone does not ask for one
    from napari_stpredict.training.protocol import missing_fold_encoders

    assert missing_fold_encoders(cfg, [("patient", "test_B", "ridge_features")]) == []


def test_an_encoder_path_with_another_placeholder_is_refused_naming_the_config(tmp_path):
    path = _per_fold_config(tmp_path, str(tmp_path / "{seed}" / "encoder.pt"))
    with pytest.raises(ValueError, match=r"eval.yaml: train: init_encoder: .*the only placeholder allowed is \{fold\}"):
        EvalConfig.from_yaml(path)


def test_the_committed_evaluation_config_trains_each_fold_from_its_own_pretraining():
    """evaluation/config.yaml (the shipped recipe) names one encoder per fold, and each fold's
    pretraining configuration writes that encoder without the fold's held-out sections."""
    from napari_stpredict.training.pretrain import load_pretrain_config

    repo = Path(__file__).resolve().parents[2]
    cfg = EvalConfig.from_yaml(repo / "evaluation" / "config.yaml")
    for fold, spec in PROTOCOLS["patient"]["folds"].items():
        encoder = Path(fold_train_config(cfg, "patient", fold, "cmrcnet", quick=False).init_encoder)
        pretrain = load_pretrain_config(repo / "evaluation" / "experiments" / "pretrain" / f"pretrain_{fold}.yaml")
        assert Path(pretrain.out_dir) / "encoder.pt" == encoder
        assert set(spec["test"]) <= set(pretrain.exclude)


def test_the_committed_results_are_current_for_the_configs_that_made_them():
    """Moving results between folders or editing a config must not silently detach them:
    the recipe without pretraining reproduces its fingerprints, and the baselines beside the
    shipped recipe's results are current for evaluation/config.yaml (they train no encoder)."""
    repo = Path(__file__).resolve().parents[2]
    checks = [
        (repo / "evaluation" / "experiments" / "pretrain" / "without", "cmrcnet"),
        (repo / "evaluation" / "results", "ridge_features"),
        (repo / "evaluation" / "results", "untrained"),
    ]
    for folder, variant in checks:
        config = folder / "config.yaml" if (folder / "config.yaml").is_file() else repo / "evaluation" / "config.yaml"
        cfg = EvalConfig.from_yaml(config)
        for fold in PROTOCOLS["patient"]["folds"]:
            path = folder / "full" / "patient" / fold / f"{variant}.json"
            recipe = fold_recipe(cfg, "patient", fold, variant, quick=False)
            assert result_is_current(path, recipe), f"{path} is not current for {config}"
