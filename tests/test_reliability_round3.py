"""Reliability round 3 (issues 23 and 24): data loss, security and the cohort's ids.

Each test makes its own files (a user's notes in an output folder, a slide kept in a
folder named like it, crafted manifests, a pickled gene list) and ends in the expected
behaviour with nothing lost.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, predict_cli

from napari_stpredict.io.output_folder import MARKER, product_files


@pytest.fixture
def cli_env(tmp_path):
    return dict(os.environ, STPREDICT_CACHE_DIR=str(tmp_path / "cache"))


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --- issue 23.1: a rerun of predict keeps the user's files in the slide's folder ----------------
@pytest.mark.slow
def test_a_predict_rerun_keeps_the_users_files(sample_slide_path, tiny_model_path, tmp_path, capsys):
    out = tmp_path / "out"
    assert predict_cli(sample_slide_path, tiny_model_path, "--out", str(out), "--no-cache") == 0
    folder = out / "her2st_C2"
    (folder / "notes.txt").write_text("pathologist's notes", encoding="utf-8")
    (folder / "qupath").mkdir()
    (folder / "qupath" / "annotations.geojson").write_text("{}", encoding="utf-8")
    first = (folder / "config.yaml").read_text(encoding="utf-8")
    assert predict_cli(sample_slide_path, tiny_model_path, "--out", str(out), "--no-cache", "--genes", "GRB7") == 0
    assert (folder / "notes.txt").read_text(encoding="utf-8") == "pathologist's notes"
    assert (folder / "qupath" / "annotations.geojson").read_text(encoding="utf-8") == "{}"
    assert (folder / "GRB7.tif").exists() and not (folder / "ERBB2.tif").exists()  # the product's own, replaced
    assert (folder / "config.yaml").read_text(encoding="utf-8") != first
    assert "notes.txt" not in product_files(folder)
    assert [p.name for p in out.iterdir()] == ["her2st_C2"]  # nothing hidden left beside it


# --- issue 24.1: never delete the input ----------------------------------------------------------
def test_out_whose_slide_folder_holds_the_slide_is_refused_before_any_work(sample_slide_path, tmp_path, capsys):
    case = tmp_path / "cases" / "CMU"
    case.mkdir(parents=True)
    slide = case / "CMU.tiff"
    shutil.copy(sample_slide_path, slide)
    (case / "notes.txt").write_text("mine", encoding="utf-8")
    before = _tree(tmp_path / "cases")
    started = time.perf_counter()
    # a model path that does not exist: the refusal comes before the model is even loaded
    rc = predict_cli(slide, tmp_path / "no_model.pt", "--out", str(tmp_path / "cases"))
    err = capsys.readouterr().err
    assert rc == 2
    assert str(case) in err and "holds the input" in err
    assert time.perf_counter() - started < 10
    assert _tree(tmp_path / "cases") == before


def test_a_mirax_data_folder_named_like_the_slide_is_refused(tmp_path, capsys):
    cases = tmp_path / "cases"
    (cases / "slide").mkdir(parents=True)
    (cases / "slide.mrxs").write_bytes(b"[GENERAL]\n")
    (cases / "slide" / "Slidedat.ini").write_text("[GENERAL]\n", encoding="utf-8")
    (cases / "slide" / "Data0000.dat").write_bytes(b"\0" * 64)
    before = _tree(cases)
    rc = predict_cli(cases / "slide.mrxs", tmp_path / "no_model.pt", "--out", str(cases))
    err = capsys.readouterr().err
    assert rc == 2 and "not written by napari-stpredict" in err and str(cases / "slide") in err
    assert _tree(cases) == before


def test_cohort_refuses_slide_folders_it_did_not_write(sample_slide_path, tiny_model_path, tmp_path, capsys):
    from napari_stpredict.cli import main

    slides = tmp_path / "slides"
    slides.mkdir()
    shutil.copy(sample_slide_path, slides / "a.tiff")
    out = tmp_path / "out"
    (out / "a").mkdir(parents=True)
    (out / "a" / "report.docx").write_bytes(b"user's")
    rc = main(["cohort", str(slides), "--out", str(out), "--model", str(tiny_model_path)])
    err = capsys.readouterr().err
    assert rc == 2 and "slide a:" in err and "not written by napari-stpredict" in err
    assert sorted(p.name for p in out.iterdir()) == ["a"]  # no table, no log: nothing started
    assert (out / "a" / "report.docx").read_bytes() == b"user's"


# --- issue 23.4: two predict runs into one --out at once -----------------------------------------
@pytest.mark.slow
def test_two_predict_runs_into_the_same_out_both_succeed(sample_slide_path, tiny_model_path, tmp_path, cli_env):
    out = tmp_path / "out"
    command = [sys.executable, "-m", "napari_stpredict.cli", "predict", str(sample_slide_path)]
    command += ["--model", str(tiny_model_path), "--out", str(out), "--no-cache"]
    procs = [subprocess.Popen(command, env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    results = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [r[1].decode()[-2000:] for r in results]
    folder = out / "her2st_C2"
    assert {"prediction.h5ad", "ERBB2.tif", "tumor_mask.tif", "overview.png", MARKER} <= {
        p.name for p in folder.iterdir()
    }
    assert [p.name for p in out.iterdir()] == ["her2st_C2"]


# --- issue 23.2, 23.3, 24.3: cohort ids and manifest rows ----------------------------------------
def _manifest(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["slide", "mpp", "id"])
        writer.writeheader()
        writer.writerows([{"mpp": "", "id": "", **row} for row in rows])
    return path


@pytest.mark.parametrize(
    ("ids", "message"),
    [
        (["."], r"line 2: id '\.' is not usable as a folder name"),
        ([".."], r"line 2: id '\.\.' is not usable as a folder name"),
        ([".hidden"], r"line 2: id '\.hidden' starts with a dot"),
        (["x" * 300], r"line 2: id 'x+' is longer than 200 bytes"),
        (["a/b", "a_b"], r"line 2 and .*line 3: ids 'a/b' and 'a_b' both become the folder name 'a_b'"),
        (["Case1", "case1"], r"line 2 and .*line 3: ids 'Case1' and 'case1' both become"),
        (["same", "same"], r"line 2 and .*line 3: id 'same' used twice"),
    ],
)
def test_bad_cohort_ids_are_refused_naming_the_manifest_line(ids, message, tmp_path):
    from napari_stpredict.cohort import resolve_slides

    rows = []
    for k, slide_id in enumerate(ids):
        (tmp_path / f"s{k}.svs").write_bytes(b"x")
        rows.append({"slide": f"s{k}.svs", "id": slide_id})
    manifest = _manifest(tmp_path / "m.csv", rows)
    with pytest.raises(ValueError, match=message) as info:
        resolve_slides([manifest])
    assert str(manifest) in str(info.value)


def test_rows_naming_one_file_with_different_ids_or_mpp_are_refused(tmp_path):
    from napari_stpredict.cohort import resolve_slides

    for k in range(3):
        (tmp_path / f"f{k}.svs").write_bytes(b"x")
    rows = [{"slide": f"f{k % 3}.svs", "id": f"sample{k:03d}"} for k in range(300)]
    with pytest.raises(ValueError, match=r"line 2 and .*line 5 name the same file f0\.svs with different ids"):
        resolve_slides([_manifest(tmp_path / "m.csv", rows)])
    rows = [{"slide": "f0.svs", "mpp": "0.5"}, {"slide": "f0.svs", "mpp": "0.25"}]
    with pytest.raises(ValueError, match=r"different mpps \(0\.5 and 0\.25\)"):
        resolve_slides([_manifest(tmp_path / "m2.csv", rows)])
    # the same file by a pattern and by a manifest row with an id: one slide, the row's id
    slides = resolve_slides(
        [str(tmp_path / "f*.svs"), _manifest(tmp_path / "m3.csv", [{"slide": "f1.svs", "id": "B"}])]
    )
    assert sorted(s.id for s in slides) == ["B", "f0", "f2"]


def test_header_only_manifest_says_it_lists_no_slides(tmp_path):
    from napari_stpredict.cohort import resolve_slides

    manifest = tmp_path / "m.csv"
    manifest.write_text("slide,mpp,id\n", encoding="utf-8")
    with pytest.raises(ValueError, match="lists no slides"):
        resolve_slides([manifest])


def test_cohort_with_a_bad_id_stops_before_any_work_and_touches_nothing(tiny_model_path, tmp_path, capsys):
    from napari_stpredict.cli import main

    (tmp_path / "s.svs").write_bytes(b"x")
    out = tmp_path / "out"
    out.mkdir()
    (out / "earlier_slide").mkdir()
    (out / "earlier_slide" / "keep.txt").write_text("keep", encoding="utf-8")
    (out / "mine.txt").write_text("mine", encoding="utf-8")
    manifest = _manifest(tmp_path / "m.csv", [{"slide": "s.svs", "id": "."}])
    before = _tree(out)
    assert main(["cohort", str(manifest), "--out", str(out), "--model", str(tiny_model_path)]) == 2
    assert "line 2: id '.'" in capsys.readouterr().err
    assert _tree(out) == before


def test_cohort_out_among_the_slides_does_not_take_its_figures_for_slides(tmp_path):
    from napari_stpredict.cohort import resolve_slides

    (tmp_path / "a.svs").write_bytes(b"x")
    for name in ("cohort_overview.png", "cohort_ERBB2.png"):
        (tmp_path / name).write_bytes(b"png")
    (tmp_path / "cohort.csv").write_text("id\n", encoding="utf-8")
    assert [s.path.name for s in resolve_slides([tmp_path])] == ["a.svs"]
    with pytest.raises(ValueError, match="no file matches"):  # the cohort's own figures are no slides
        resolve_slides([str(tmp_path / "*.png")])


# --- issue 23.7: formulas in cohort.csv ------------------------------------------------------------
def test_cohort_csv_cells_cannot_be_spreadsheet_formulas(tiny_model_path, tmp_path):
    from napari_stpredict.cli import main

    manifest = _manifest(tmp_path / "m.csv", [{"slide": '=HYPERLINK("http://x")', "id": "evil"}])
    out = tmp_path / "out"
    assert main(["cohort", str(manifest), "--out", str(out), "--model", str(tiny_model_path)]) == 1  # not found
    with (out / "cohort.csv").open(newline="", encoding="utf-8") as fh:
        row = next(csv.DictReader(fh))
    assert row["slide"] == '\'=HYPERLINK("http://x")'
    assert row["status"] == "failed"
    for cell in (row["slide"], row["error"]):
        assert not cell.startswith(("=", "+", "-", "@"))


def test_spot_table_csv_neutralises_formula_like_text():
    import pandas as pd

    from napari_stpredict.io.tables import neutralise_formulas

    frame = pd.DataFrame({"name": ["=1+1", "+A", "-B", "@C", "ok", "\tx"], "value": [-1.5, 2, 3, 4, 5, 6]})
    clean = neutralise_formulas(frame)
    assert list(clean["name"]) == ["'=1+1", "'+A", "'-B", "'@C", "ok", "'\tx"]
    assert list(clean["value"]) == [-1.5, 2, 3, 4, 5, 6]  # numbers stay numbers


# --- issue 24.2: no pickle anywhere the product reads user files ---------------------------------
def test_a_pickled_gene_list_is_refused_without_running_it(tmp_path):
    from napari_stpredict.training.genes import benchmark_genes

    flag = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (flag,))

    evil = tmp_path / "genes.npy"
    np.save(evil, np.array([Payload()], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match=r"genes\.npy: the gene list holds pickled Python objects"):
        benchmark_genes(evil)
    assert not flag.exists()
    good = tmp_path / "good.npy"
    np.save(good, np.array(["ERBB2", "GRB7"]))
    assert benchmark_genes(good) == ["ERBB2", "GRB7"]
    (tmp_path / "bad.npy").write_bytes(b"not numpy")
    with pytest.raises(ValueError, match="bad.npy"):
        benchmark_genes(tmp_path / "bad.npy")


_UNSAFE_LOADERS = [
    (r"allow_pickle\s*=\s*True", "np.load(..., allow_pickle=True)"),
    (r"\bpickle\.loads?\(", "pickle.load"),
    (r"\b(?:c?Pickle|dill|joblib)\.load", "pickle-based loader"),
    (r"\byaml\.(?:load|unsafe_load|full_load)\(", "yaml.load without SafeLoader"),
    (r"\btorch\.load\((?![^)]*weights_only=True)", "torch.load without weights_only=True"),
    (r"\bpd\.read_pickle\(", "pandas.read_pickle"),
    (r"(?<![\w.])eval\(|(?<![\w.])exec\(", "eval/exec"),
]


def test_the_package_has_no_unsafe_loader():
    offenders = []
    for path in sorted((REPO / "src" / "napari_stpredict").rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        for pattern, what in _UNSAFE_LOADERS:
            for match in re.finditer(pattern, text):
                line = text.count("\n", 0, match.start()) + 1
                offenders.append(f"{path.relative_to(REPO)}:{line}: {what}")
    assert not offenders, offenders


# --- issue 23.6, 24.4: absurd resolution tags, tissue detection in bounded time and memory -------
def _tiff_with_resolution(path: Path, mpp: float, image: np.ndarray) -> Path:
    import tifffile

    per_cm = 1e4 / mpp
    tifffile.imwrite(path, image, photometric="rgb", resolution=(per_cm, per_cm), resolutionunit="CENTIMETER")
    return path


@pytest.mark.parametrize("mpp", [0.001, 0.01])  # the largest TIFF resolution rationals hold
def test_resolution_tags_finer_than_any_microscope_are_treated_as_missing(sample_slide_path, tmp_path, mpp, capsys):
    from napari_stpredict.cli import main
    from napari_stpredict.io.slide import open_slide

    with open_slide(sample_slide_path) as slide:
        crop = slide.read_region((2000, 2000), 0, (800, 800))
    path = _tiff_with_resolution(tmp_path / "absurd.tif", mpp, crop)
    with open_slide(path) as slide:
        assert slide.mpp_x is None  # not believed
    started = time.perf_counter()
    assert main(["info", str(path), "--out", str(tmp_path / "info")]) in (0, 1)
    assert time.perf_counter() - started < 60
    rc = predict_cli(path, tmp_path / "no_model.pt", "--out", str(tmp_path / "out"))
    assert rc != 0  # the slide needs --mpp (or the model is missing); never a MemoryError
    assert "MemoryError" not in capsys.readouterr().err


@pytest.mark.parametrize(("side", "mpp"), [(1100, 0.25), (1000, 0.5)])
def test_tissue_detection_on_a_small_fine_image_is_bounded(sample_slide_path, side, mpp):
    import tracemalloc

    from napari_stpredict.io.slide import open_slide
    from napari_stpredict.tissue import detect_tissue

    with open_slide(sample_slide_path) as slide:
        crop = slide.read_region((2200, 2200), 0, (side, side))  # tissue and glass
    tracemalloc.start()
    started = time.perf_counter()
    mask = detect_tissue(crop, mpp=mpp)
    seconds = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert seconds < 15, seconds
    assert peak < 500e6, peak
    assert mask.shape == crop.shape[:2] and 0.05 < mask.mean() <= 1.0


# --- issue 24.7: every numeric argument of predict_slide checked --------------------------------
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"prefetch_batches": 0}, "prefetch_batches must be a whole number of at least 1, got 0"),
        ({"prefetch_batches": -1}, "prefetch_batches must be a whole number"),
        ({"num_workers": 0}, "num_workers must be a whole number"),
        ({"batch_size": 0}, "batch_size must be a whole number"),
        ({"stride_um": 1e9}, "stride_um 1e\\+09 µm is longer than her2st_C2"),
        ({"stride_um": float("nan")}, "stride_um must be a finite number"),
        ({"stride_um": 1.0}, "stride_um must be at least 14 µm"),
        ({"roi": []}, "roi is empty"),
        ({"roi": [[0, 0], [10, float("nan")], [5, 5]]}, "not a finite number"),
        ({"roi": [10, 10, 5, 5]}, "x1 > x0"),
    ],
)
def test_bad_engine_arguments_are_refused_before_any_work(sample_slide_path, tiny_model, kwargs, message):
    from napari_stpredict.inference import predict_slide
    from napari_stpredict.io.slide import open_slide

    with open_slide(sample_slide_path) as slide, pytest.raises(ValueError, match=message):
        next(predict_slide(slide, tiny_model, **kwargs))


# --- issue 23.8: regions: a NaN named, a huge polygon in bounded time ------------------------------
def test_a_nan_coordinate_in_a_region_file_is_named(tmp_path, capsys):
    import json

    from napari_stpredict.io.regions import parse_roi

    path = tmp_path / "roi.geojson"
    ring = [[0, 0], [100, 0], [float("nan"), 100], [0, 0]]
    path.write_text(json.dumps({"type": "Polygon", "coordinates": [ring]}).replace("NaN", "NaN"), encoding="utf-8")
    with pytest.raises(ValueError, match=r"roi\.geojson: a Polygon has a coordinate that is not a number"):
        parse_roi(str(path))


def test_a_region_of_200000_vertices_is_rasterised_in_bounded_time():
    from napari_stpredict.tiling import roi_mask

    angles = np.linspace(0, 2 * np.pi, 200_000, endpoint=False)
    polygon = np.stack([5000 + 4000 * np.cos(angles), 5000 + 4000 * np.sin(angles)], axis=1)
    started = time.perf_counter()
    mask = roi_mask((1000, 1000), (10.0, 10.0), [polygon.tolist()])
    assert time.perf_counter() - started < 10
    area = mask.mean()
    assert abs(area - np.pi * 0.4**2) < 0.01  # the disc it is
    noisy = polygon + np.random.default_rng(0).normal(scale=30.0, size=polygon.shape)  # a hostile outline
    started = time.perf_counter()
    roi_mask((1000, 1000), (10.0, 10.0), [noisy.tolist()])
    assert time.perf_counter() - started < 10


# --- issue 23.5, 24.10: any file name the file system allows ---------------------------------------
@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="platform: non-UTF-8 names are POSIX bytes")
def test_unusual_file_names_are_predicted_and_kept_in_every_output(sample_slide_path, tiny_model_path, tmp_path):
    import tifffile

    names = ["Müller ü.tiff", "x" * 245 + ".tiff", os.fsdecode(b"slide\xff\xfe.tiff")]
    for name in names:
        shutil.copy(sample_slide_path, tmp_path / name)
    out = tmp_path / "out"
    from napari_stpredict.cli import main

    rc = main(["predict", *[str(tmp_path / n) for n in names], "--model", str(tiny_model_path), "--out", str(out)])
    assert rc == 0
    folders = sorted(p for p in out.iterdir() if not p.name.startswith("."))
    assert len(folders) == 3
    assert all(len(f.name.encode("utf-8")) <= 200 for f in folders)
    umlaut = out / "Müller_ü"
    with tifffile.TiffFile(umlaut / "ERBB2.tif") as tif:
        metadata = tif.pages[0].tags["GDAL_METADATA"].value
    assert "M&#252;ller &#252;.tiff" in metadata  # decoded by GDAL and any XML reader
    import rasterio

    with rasterio.open(umlaut / "ERBB2.tif") as raster:
        assert raster.tags()["SLIDE"] == "Müller ü.tiff"
    for folder in folders:
        assert (folder / "prediction.h5ad").exists() and (folder / "config.yaml").exists()


# --- issue 24.6: measured spots with non-finite counts or the wrong shape ----------------------------
@pytest.fixture(scope="module")
def sample_prediction(sample_slide_path, tiny_model):
    from napari_stpredict.inference import run_prediction
    from napari_stpredict.io.slide import open_slide

    with open_slide(sample_slide_path) as slide:
        return run_prediction(slide, tiny_model)


def _analysis(prediction):
    from napari_stpredict.analysis import SlideAnalysis
    from napari_stpredict.placement import Placement

    mpp = (prediction.meta.mpp_y, prediction.meta.mpp_x)
    return SlideAnalysis("slide", prediction, Placement(mpp, (0.0, 0.0), None, ("µm", "µm")))


def test_a_nan_count_leaves_one_spot_out_not_the_whole_comparison(sample_prediction, sample_spots_path):
    import anndata as ad
    import scipy.sparse as sp

    from napari_stpredict.layers import measured_points_layer

    spots = ad.read_h5ad(sample_spots_path)
    x = spots.X.toarray() if sp.issparse(spots.X) else np.array(spots.X, dtype=float)
    x = x.astype(np.float64)
    x[0, 0] = np.nan
    x[1, 5] = np.inf
    spots.X = x
    analysis = _analysis(sample_prediction)
    analysis.set_spots(spots, "broken.h5ad")
    _, kwargs, _ = measured_points_layer(spots, "ERBB2", mpp=(0.688, 0.688), placement=analysis.placement)
    lo, hi = kwargs["face_contrast_limits"]
    assert np.isfinite(lo) and np.isfinite(hi) and hi > lo  # the other points stay visible
    assert kwargs["metadata"]["stpredict"]["not_finite"] == 2
    r = analysis.pearson("ERBB2", kwargs["features"]["expression"])
    assert np.isfinite(r)


@pytest.mark.parametrize("columns", [1, 3])
def test_spot_positions_of_the_wrong_shape_are_refused_naming_the_shape(sample_prediction, sample_spots_path, columns):
    import anndata as ad

    spots = ad.read_h5ad(sample_spots_path)
    xy = np.asarray(spots.obsm["spatial"], float)
    spots.obsm["spatial"] = xy[:, :1] if columns == 1 else np.column_stack([xy, np.zeros(len(xy))])
    expected = rf"bad\.h5ad: obsm\['spatial'\] must hold one level-0 \(x, y\) pair per spot, shape \({len(xy)}, 2\)"
    with pytest.raises(ValueError, match=expected + rf"; got shape \({len(xy)}, {columns}\)"):
        _analysis(sample_prediction).set_spots(spots, "bad.h5ad")


# --- issue 24.9: train / evaluate configs fail in one line naming the file and key -----------------
def _empty_h5ad(path: Path) -> Path:
    import anndata as ad

    ad.AnnData(np.zeros((0, 3), np.float32)).write_h5ad(path)
    return path


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("train_sections: []\n", "train_sections is empty"),
        ("train_sections: [Z9]\n", "train_sections: her2st section 'Z9' is not in"),
        ("train_sections: [C3\n  bad: [\n", r"not valid YAML at line 3, column 6"),
        ("train_sections: [C3]\nbogus_key: 1\n", "unknown training config keys: bogus_key"),
        ("train_sections: [C3]\nsteps: 0\n", "steps must be a whole number of at least 1, got 0"),
        ("train_sections: [EMPTY]\n", "train_sections: .*empty.h5ad: has no spots"),
        ("- just\n- a list\n", "a config is a mapping of keys to values, got list"),
    ],
)
def test_bad_training_configs_are_one_line_naming_file_and_key(her2st_dir, tmp_path, capsys, body, message):
    from napari_stpredict.cli import main

    body = body.replace("EMPTY", str(_empty_h5ad(tmp_path / "empty.h5ad")))
    config = tmp_path / "train.yaml"
    config.write_text((f"her2st: {her2st_dir}\n" if not body.startswith("-") else "") + body, encoding="utf-8")
    started = time.perf_counter()
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"error: {config}:"), err
    assert err.count(str(config)) == 1 and re.search(message, err), err
    assert time.perf_counter() - started < 30
    assert not (tmp_path / "run").exists()


def test_a_bad_evaluation_key_names_its_file_once(tmp_path, capsys):
    from napari_stpredict.cli import main

    config = tmp_path / "eval.yaml"
    config.write_text("bogus: 1\n", encoding="utf-8")
    assert main(["evaluate", "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {config}: unknown evaluation config keys: bogus"


# --- issue 23.8 (EXIF), 24.10: plain images as viewers show them; TIFFs named for what they are ---
def test_a_jpeg_is_read_as_its_exif_orientation_shows_it(tmp_path):
    from PIL import Image

    from napari_stpredict.io.slide import open_slide

    image = np.zeros((60, 100, 3), np.uint8)
    image[:10, :, 0] = 255  # a red band along the top as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    Image.fromarray(image).save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    with open_slide(tmp_path / "rotated.jpg", mpp=0.5) as slide:
        assert slide.dimensions == (60, 100)  # displayed: portrait
        shown = slide.read_region((0, 0), 0, slide.dimensions)
    assert shown[:, -10:, 0].mean() > 200 and shown[:, :10, 0].mean() < 50  # the band is on the right


def test_palette_and_float_tiffs_are_read_or_named_for_what_they_are(sample_slide_path, tmp_path):
    import tifffile
    from PIL import Image

    from napari_stpredict.errors import SlideFormatError
    from napari_stpredict.io.slide import open_slide

    with open_slide(sample_slide_path) as slide:
        crop = slide.read_region((2200, 2200), 0, (400, 400))
    Image.fromarray(crop).convert("P", palette=Image.Palette.ADAPTIVE).save(tmp_path / "palette.tif")
    with open_slide(tmp_path / "palette.tif", mpp=0.5) as slide:
        colours = slide.read_region((0, 0), 0, (400, 400))
    assert colours.shape == (400, 400, 3) and np.abs(colours.astype(int) - crop).mean() < 12  # colours, not indices
    tifffile.imwrite(tmp_path / "float.tif", crop.astype(np.float32) / 255, photometric="rgb")
    with pytest.raises(SlideFormatError, match=r"float\.tif: samples are float32; only 8-bit RGB or grey"):
        open_slide(tmp_path / "float.tif", mpp=0.5)
