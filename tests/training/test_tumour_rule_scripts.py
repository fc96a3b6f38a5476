"""The tumour-rule analysis scripts of evaluation/experiments/tumour_rule, run as a user
runs them on a committed fold result and the real her2st data."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "evaluation" / "experiments" / "tumour_rule" / "under_calls.py"
FOLD = REPO / "evaluation" / "experiments" / "pretrain" / "loso_C" / "full" / "loso_C" / "test_C6" / "cmrcnet.json"


def _out_dir_with(tmp_path: Path, record: dict) -> Path:
    out_dir = tmp_path / "loso"
    path = out_dir / "full" / "loso_C" / "test_C6" / "cmrcnet.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(record), encoding="utf-8")
    return out_dir


def test_under_calls_matches_the_evaluations_measured_ceiling_and_its_calls(tmp_path, her2st_dir):
    """The measured panel score is the one the evaluation's ceiling used (same AUC), so the
    spot-by-spot comparison is aligned; the missed spots are the calibrated call's misses."""
    record = json.loads(FOLD.read_text(encoding="utf-8"))
    out_dir = _out_dir_with(tmp_path, record)
    out = tmp_path / "rows.json"
    args = [sys.executable, str(SCRIPT), str(out_dir), "--protocol", "loso_C", "--her2st", str(her2st_dir)]
    done = subprocess.run([*args, "--out", str(out)], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    row = json.loads(out.read_text(encoding="utf-8"))["rows"]["loso:C6"]
    assert row["measured_auc"] == round(record["tumor_auc_ceiling_measured"]["C6"], 3)
    recorded = record["trust"]["C6"]["absolute"]
    assert row["calibrated"]["sensitivity"] == round(recorded["sensitivity"], 3)
    assert row["cancer"] - row["missed"] == round(recorded["sensitivity"] * row["cancer"])
    z = row["measured_z_median"]
    assert z["missed_cancer"] < z["called_cancer"]

    # a fold whose labels do not match the data is refused, naming the section
    shutil.rmtree(out_dir)
    cancer = record["trust"]["C6"]["labelled_scores"]["cancer"]
    record["trust"]["C6"]["labelled_scores"]["cancer"] = [not c for c in cancer]
    _out_dir_with(tmp_path, record)
    refused = subprocess.run(args, capture_output=True, text=True, cwd=REPO)
    assert refused.returncode != 0 and "C6" in refused.stderr


def test_threshold_band_adds_only_uncalled_spots_above_its_low_end():
    """section_thresholds.band_on_held_out on a committed held-out section: a band that
    starts at the threshold adds nothing and reproduces the recorded call; a band below
    every score adds every in-domain spot the call left out, and no out-of-domain one."""
    import importlib.util

    import numpy as np

    path = REPO / "evaluation" / "experiments" / "tumour_rule" / "section_thresholds.py"
    spec = importlib.util.spec_from_file_location("section_thresholds", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    entry = json.loads(FOLD.read_text(encoding="utf-8"))["trust"]["C6"]
    threshold = float(entry["absolute"]["threshold"])
    none = module.band_on_held_out(entry, threshold)
    assert none["band_share"] == 0 and none["sensitivity_with_band"] == none["sensitivity"]
    assert none["sensitivity"] == round(entry["absolute"]["sensitivity"], 3)
    assert none["specificity"] == round(entry["absolute"]["specificity"], 3)

    scores = entry["labelled_scores"]
    score = np.asarray(scores["absolute"], float)
    ood = np.asarray(scores["out_of_domain"], bool)
    cancer = np.asarray(scores["cancer"], bool)
    missed = cancer & ~((score > threshold) & ~ood)
    everything = module.band_on_held_out(entry, float(score.min()) - 1.0)
    assert everything["missed_cancer_in_band"] == round(float((missed & ~ood).sum() / missed.sum()), 3)
    assert everything["sensitivity_with_band"] == round(float((cancer & ~ood).sum() / cancer.sum()), 3)
    assert everything["specificity_with_band"] == round(float((~cancer & ood).sum() / (~cancer).sum()), 3)
