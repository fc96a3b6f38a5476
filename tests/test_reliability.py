"""Hostile and broken inputs (issue 12): each ends in a clear message naming the file or
option, in bounded time and memory, with nothing partial left and the other slides of
the command completed."""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import predict_cli
from PIL import Image

from napari_stpredict.errors import SlideFormatError, StPredictError
from napari_stpredict.io.slide import open_slide


# --- crafted files ------------------------------------------------------------------------
def looping_tiff(path: Path) -> Path:
    """A valid tiled RGB TIFF whose first image directory points back to itself."""
    import tifffile

    tifffile.imwrite(path, np.full((64, 64, 3), 200, np.uint8), tile=(16, 16))
    data = bytearray(path.read_bytes())
    first = struct.unpack("<I", data[4:8])[0]
    n_entries = struct.unpack("<H", data[first : first + 2])[0]
    next_at = first + 2 + n_entries * 12
    data[next_at : next_at + 4] = struct.pack("<I", first)
    path.write_bytes(bytes(data))
    return path


def giant_tiff(path: Path, side: int = 100_000, tile: int = 1024) -> Path:
    """A small, complete tiled TIFF declaring ``side`` x ``side`` RGB pixels in one level:
    every tile points to the same deflate-compressed blank tile."""
    blob = zlib.compress(np.full((tile, tile, 3), 240, np.uint8).tobytes(), 9)
    n_tiles = (-(-side // tile)) ** 2
    entries = [  # tag, type, count, value-or-offset (filled below)
        (256, 4, 1, side),
        (257, 4, 1, side),
        (258, 3, 3, None),
        (259, 3, 1, 8),
        (262, 3, 1, 2),
        (277, 3, 1, 3),
        (284, 3, 1, 1),
        (322, 3, 1, tile),
        (323, 3, 1, tile),
        (324, 4, n_tiles, None),
        (325, 4, n_tiles, None),
    ]
    ifd_at = 8
    ifd_size = 2 + len(entries) * 12 + 4
    bits_at = ifd_at + ifd_size
    offsets_at = bits_at + 6
    counts_at = offsets_at + 4 * n_tiles
    blob_at = counts_at + 4 * n_tiles
    out = io.BytesIO()
    out.write(b"II*\x00" + struct.pack("<I", ifd_at))
    out.write(struct.pack("<H", len(entries)))
    for tag, typ, count, value in entries:
        if tag == 258:
            value = bits_at
        elif tag == 324:
            value = offsets_at
        elif tag == 325:
            value = counts_at
        packed = struct.pack("<HH", value, 0) if typ == 3 and count == 1 else struct.pack("<I", value)
        out.write(struct.pack("<HHI", tag, typ, count) + packed)
    out.write(struct.pack("<I", 0))
    out.write(struct.pack("<HHH", 8, 8, 8))
    out.write(struct.pack(f"<{n_tiles}I", *([blob_at] * n_tiles)))
    out.write(struct.pack(f"<{n_tiles}I", *([len(blob)] * n_tiles)))
    out.write(blob)
    path.write_bytes(out.getvalue())
    return path


def _tiny_image(fmt: str) -> bytearray:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (230, 200, 220)).save(buf, format=fmt)
    return bytearray(buf.getvalue())


def giant_png(path: Path, side: int = 65_500) -> Path:
    """A tiny PNG whose header declares ``side`` x ``side`` pixels (its CRC fixed)."""
    data = _tiny_image("PNG")
    ihdr = data.index(b"IHDR")
    data[ihdr + 4 : ihdr + 12] = struct.pack(">II", side, side)
    data[ihdr + 17 : ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr : ihdr + 17])))
    path.write_bytes(bytes(data))
    return path


def giant_jpeg(path: Path, side: int = 65_500) -> Path:
    """A JPEG of a few hundred bytes whose frame header declares ``side`` x ``side`` pixels."""
    data = _tiny_image("JPEG")
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", side, side)
    path.write_bytes(bytes(data))
    return path


def _stpredict(*args, timeout=300, env=None):
    """The real command in a child process (hangs become timeouts, not a stuck test run)."""
    return subprocess.run(
        [sys.executable, "-m", "napari_stpredict.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


@pytest.fixture
def cli_env(tmp_path):
    return dict(os.environ, STPREDICT_CACHE_DIR=str(tmp_path / "cache"))


# --- 1, 2: hangs ------------------------------------------------------------------------------
def test_looping_tiff_is_refused_at_once(tmp_path):
    path = looping_tiff(tmp_path / "loop.tif")
    t0 = time.perf_counter()
    with pytest.raises(SlideFormatError, match="loop.tif.*loop"):
        open_slide(path)
    assert time.perf_counter() - t0 < 2
    from napari_stpredict._reader import napari_get_reader

    t0 = time.perf_counter()
    reader = napari_get_reader(str(path))  # napari's probe on open / drag-and-drop
    assert time.perf_counter() - t0 < 2 and reader is not None
    with pytest.raises(StPredictError, match="loop"):
        reader(str(path))


@pytest.mark.slow
def test_looping_tiff_in_info_and_predict_does_not_stop_the_others(
    tmp_path, sample_slide_path, tiny_model_path, cli_env
):
    loop = looping_tiff(tmp_path / "loop.tif")
    out = _stpredict("info", loop, sample_slide_path, "--out", tmp_path / "info", timeout=120, env=cli_env)
    assert out.returncode == 1 and "loop.tif" in out.stderr and "loop" in out.stderr
    assert (tmp_path / "info" / "her2st_C2_summary.json").exists()
    out = _stpredict(
        "predict",
        loop,
        sample_slide_path,
        "--model",
        tiny_model_path,
        "--out",
        tmp_path / "p",
        timeout=300,
        env=cli_env,
    )
    assert out.returncode == 1 and "loop.tif" in out.stderr
    assert (tmp_path / "p" / "her2st_C2" / "prediction.h5ad").exists()
    assert not (tmp_path / "p" / "loop").exists()  # a failed slide leaves no folder
    assert "Traceback" not in out.stderr and "TiffPages" not in out.stderr  # only our message


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="platform: named pipes are POSIX")
def test_fifo_named_like_a_slide_does_not_block(tmp_path, sample_slide_path, tiny_model_path, cli_env):
    fifo = tmp_path / "x.svs"
    os.mkfifo(fifo)
    from napari_stpredict._reader import napari_get_reader

    assert napari_get_reader(str(fifo)) is not None  # returns at once; opening explains
    with pytest.raises(SlideFormatError, match="x.svs.*named pipe"):
        open_slide(fifo)
    out = _stpredict(
        "predict",
        fifo,
        sample_slide_path,
        "--model",
        tiny_model_path,
        "--out",
        tmp_path / "p",
        timeout=300,
        env=cli_env,
    )
    assert out.returncode == 1 and "x.svs" in out.stderr and "named pipe" in out.stderr
    assert (tmp_path / "p" / "her2st_C2" / "prediction.h5ad").exists()


def test_symlink_loop_and_zeroed_file_are_named_for_what_they_are(tmp_path):
    loop = tmp_path / "a.svs"
    os.symlink(tmp_path / "b.svs", loop)
    os.symlink(loop, tmp_path / "b.svs")
    with pytest.raises(SlideFormatError, match="a.svs.*link"):
        open_slide(loop)
    zeros = tmp_path / "z.svs"
    zeros.write_bytes(b"\0" * 4096)
    with pytest.raises(SlideFormatError, match="z.svs.*zero bytes"):
        open_slide(zeros)


# --- 3: regions ------------------------------------------------------------------------------
def test_roi_box_as_the_readme_writes_it(sample_slide_path, tiny_model_path, tmp_path, monkeypatch):
    from napari_stpredict.inference import Prediction

    monkeypatch.setenv("STPREDICT_CACHE_DIR", str(tmp_path / "cache"))
    assert (
        predict_cli(sample_slide_path, tiny_model_path, "--roi", "2000,2000,5000,5000", "--out", str(tmp_path / "o"))
        == 0
    )
    centres = Prediction.load(tmp_path / "o" / "her2st_C2" / "prediction.h5ad").l0_centres
    assert len(centres) > 10 and (centres >= 2000).all() and (centres <= 5000).all()


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "file not found"),
        ("", "not a readable GeoJSON"),
        ("{not json", "not a readable GeoJSON"),
        (json.dumps({"type": "Feature", "geometry": None, "properties": {}}), "no Polygon"),
        (
            json.dumps(
                {
                    "type": "FeatureCollection",
                    "features": [{"type": "Feature", "geometry": {"type": "Point", "coordinates": [1, 2]}}],
                }
            ),
            "no Polygon",
        ),
        (json.dumps({"type": "Polygon", "coordinates": [[[0, 0], ["a", 1], [2, 2]]]}), "malformed coordinates"),
    ],
)
def test_bad_roi_files_are_named(tmp_path, content, message, capsys):
    from napari_stpredict.cli import main

    roi = tmp_path / "region.geojson"
    if content is not None:
        roi.write_text(content)
    assert main(["predict", "--sample", "--roi", str(roi), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "--roi" in err and "region.geojson" in err and message in err
    assert not (tmp_path / "o").exists()  # checked before any output or slow work


def test_roi_from_a_qupath_list_and_null_geometries(tmp_path):
    from napari_stpredict.io.regions import parse_roi

    square = [[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]]
    roi = tmp_path / "qupath.geojson"
    roi.write_text(
        json.dumps(
            [
                {"type": "Feature", "geometry": None},
                {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [square]}},
            ]
        )
    )
    assert parse_roi(str(roi)) == [[[float(x), float(y)] for x, y in square]]


# --- 4: output collisions ------------------------------------------------------------------------
@pytest.mark.slow
def test_slides_with_the_same_name_in_two_folders_both_survive(
    sample_slide_path, tiny_model_path, tmp_path, monkeypatch, capsys
):
    from napari_stpredict.cli import main

    monkeypatch.setenv("STPREDICT_CACHE_DIR", str(tmp_path / "cache"))
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        shutil.copy(sample_slide_path, tmp_path / folder / "slide.tiff")
    rc = main(
        [
            "predict",
            str(tmp_path / "a" / "slide.tiff"),
            str(tmp_path / "b" / "slide.tiff"),
            "--model",
            str(tiny_model_path),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert rc == 0
    folders = sorted(p.name for p in (tmp_path / "o").iterdir())
    assert len(folders) == 2 and all(f.startswith("slide-") for f in folders), folders
    assert all((tmp_path / "o" / f / "prediction.h5ad").exists() for f in folders)
    out = capsys.readouterr().out
    assert all(f in out for f in folders)


def test_output_folder_is_all_or_nothing_and_leftovers_are_cleared(tmp_path):
    from napari_stpredict.io.output_folder import MARKER
    from napari_stpredict.io.output_folder import output_folder as atomic_folder

    target = tmp_path / "slide"
    (tmp_path / ".slide.partial-killed").mkdir()  # what a killed run leaves
    with pytest.raises(RuntimeError):
        with atomic_folder(target) as tmp:
            (tmp / "a.txt").write_text("half")
            raise RuntimeError("disk full")
    assert not target.exists() and not list(tmp_path.glob(".slide.partial-*"))
    with atomic_folder(target) as tmp:
        (tmp / "a.txt").write_text("whole")
    with atomic_folder(target) as tmp:  # a rerun replaces the product's files
        (tmp / "b.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == [MARKER, "b.txt"] and len(list(tmp_path.iterdir())) == 1


# --- 5, 6: the cache ------------------------------------------------------------------------------
def _run_cached(slide, model, model_path, directory):
    from napari_stpredict.inference.cache import cached_predict_slide

    gen = cached_predict_slide(slide, model, model_path=model_path, directory=directory, stride_um=112.0)
    stages = []
    while True:
        try:
            stages.append(next(gen)["stage"])
        except StopIteration as stop:
            return stop.value, stages


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncate", "zero", "flip"])
def test_damaged_cache_entry_is_recomputed_with_a_warning(
    sample_slide_path, tiny_model, tiny_model_path, tmp_path, damage
):
    from napari_stpredict.errors import StPredictWarning

    with open_slide(sample_slide_path) as slide:
        first, _ = _run_cached(slide, tiny_model, tiny_model_path, tmp_path)
        entry = next(tmp_path.glob("*.h5ad"))
        data = bytearray(entry.read_bytes())
        if damage == "truncate":
            data = data[: len(data) // 2]
        elif damage == "zero":
            data = bytearray(len(data))
        else:
            mid = len(data) // 2
            data[mid : mid + 4096] = bytes(b ^ 0xFF for b in data[mid : mid + 4096])
        entry.write_bytes(bytes(data))
        with pytest.warns(StPredictWarning, match="her2st_C2.tiff.*damaged cache entry"):
            second, stages = _run_cached(slide, tiny_model, tiny_model_path, tmp_path)
        assert "predict" in stages and np.allclose(first.adata.X, second.adata.X)
        third, stages = _run_cached(slide, tiny_model, tiny_model_path, tmp_path)
        assert stages == ["cache"]  # the recomputed entry is good


@pytest.mark.slow
def test_swapped_cache_entry_is_detected(sample_slide_path, tiny_model, tiny_model_path, tmp_path):
    from napari_stpredict.errors import StPredictWarning
    from napari_stpredict.inference.cache import cached_predict_slide

    with open_slide(sample_slide_path) as slide:
        first, _ = _run_cached(slide, tiny_model, tiny_model_path, tmp_path)
        entry = next(tmp_path.glob("*.h5ad"))
        gen = cached_predict_slide(
            slide,
            tiny_model,
            model_path=tiny_model_path,
            directory=tmp_path,
            stride_um=224.0,
            roi=[2000, 2000, 3000, 3000],
        )
        for _ in gen:
            pass
        other = next(p for p in tmp_path.glob("*.h5ad") if p != entry)
        shutil.copy(other, entry)  # the entry now holds another prediction (fewer spots)
        with pytest.warns(StPredictWarning, match="another prediction"):
            second, stages = _run_cached(slide, tiny_model, tiny_model_path, tmp_path)
        assert len(second) == len(first) and "predict" in stages


def test_same_size_edit_of_the_slide_misses_the_cache(sample_slide_path, tiny_model, tiny_model_path, tmp_path):
    from napari_stpredict.inference.cache import slide_fingerprint

    copy = tmp_path / "s.tiff"
    shutil.copy(sample_slide_path, copy)
    before = slide_fingerprint(copy)
    data = bytearray(copy.read_bytes())
    at = len(data) // 17 + 70_000  # between two sampled blocks
    data[at] ^= 0xFF
    stat = copy.stat()
    copy.write_bytes(bytes(data))
    os.utime(copy, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert copy.stat().st_size == stat.st_size and slide_fingerprint(copy) != before


@pytest.mark.slow
def test_leftovers_of_a_killed_cache_write_are_removed(sample_slide_path, tiny_model, tiny_model_path, tmp_path):
    with open_slide(sample_slide_path) as slide:
        _run_cached(slide, tiny_model, tiny_model_path, tmp_path)
        entry = next(tmp_path.glob("*.h5ad"))
        leftover = tmp_path / f".{entry.name}.killed.part"  # what atomic_path leaves when killed
        leftover.write_bytes(b"half an HDF5 file")
        entry.unlink()
        _run_cached(slide, tiny_model, tiny_model_path, tmp_path)
    assert not leftover.exists() and entry.exists()


@pytest.mark.slow
def test_unwritable_cache_only_costs_the_caching(sample_slide_path, tiny_model_path, tmp_path, monkeypatch, capsys):

    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("STPREDICT_CACHE_DIR", str(blocker / "predictions"))
    with pytest.warns(UserWarning, match="could not be cached"):
        rc = predict_cli(sample_slide_path, tiny_model_path, "--out", str(tmp_path / "o"))
    assert rc == 0 and (tmp_path / "o" / "her2st_C2" / "config.yaml").exists()


# --- 7: memory -------------------------------------------------------------------------------------
def test_header_only_giant_images_are_refused_in_bounded_memory(tmp_path):
    import psutil

    process = psutil.Process()
    before = process.memory_info().rss
    for path, match in [
        (giant_tiff(tmp_path / "giant.tif"), "100,000 x 100,000.*pyramid"),
        (giant_tiff(tmp_path / "giant6.tif", side=1_000_000, tile=4096), "1,000,000 x 1,000,000"),
        (giant_png(tmp_path / "giant.png"), "giant.png"),
        (giant_jpeg(tmp_path / "giant.jpg"), "giant.jpg"),
    ]:
        assert path.stat().st_size < 2_000_000
        t0 = time.perf_counter()
        with pytest.raises(SlideFormatError, match=match):
            open_slide(path, mpp=0.5)
        assert time.perf_counter() - t0 < 10
    from napari_stpredict._reader import napari_get_reader

    reader = napari_get_reader(str(tmp_path / "giant.tif"))  # napari's File > Open: refused at once
    t0 = time.perf_counter()
    with pytest.raises(SlideFormatError, match="pyramid"):
        reader(str(tmp_path / "giant.tif"))
    assert time.perf_counter() - t0 < 10
    assert process.memory_info().rss - before < 500 * 2**20


def test_absurd_mpp_is_a_usage_error(capsys, tmp_path):
    from napari_stpredict.cli import main

    assert main(["predict", "--sample", "--mpp", "1e-6", "--out", str(tmp_path / "o")]) == 2
    assert "--mpp" in capsys.readouterr().err


# --- 8: output targets --------------------------------------------------------------------------------
def test_out_that_is_a_file_is_a_usage_error(tmp_path, capsys):
    from napari_stpredict.cli import main

    target = tmp_path / "results"
    target.write_text("not a folder")
    assert main(["predict", "--sample", "--out", str(target)]) == 2
    assert "--out" in capsys.readouterr().err and target.read_text() == "not a folder"
    assert main(["info", "--sample", "--out", str(target)]) == 2


# --- 10: checkpoints with values that pass type checks ------------------------------------------------
def _crafted(tmp_path, **changes):
    import torch

    from napari_stpredict.model import default_model_path

    data = torch.load(default_model_path(), map_location="cpu", weights_only=True)
    for section, values in changes.items():
        data[section].update(values)
    path = tmp_path / "crafted.pt"
    torch.save(data, path)
    return path


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"io": {"std": [0.229, 0.0, 0.225]}}, "io.std must be positive"),
        ({"io": {"input_px": 0}}, "io.input_px must be an integer from 16"),
        ({"io": {"input_px": 100_000}}, "io.input_px"),
        ({"io": {"patch_um": 0.001}}, "io.patch_um must be between"),
        ({"model_config": {"embed_dim": 10_000_000}}, "embed_dim"),
        ({"model_config": {"backbone": "hf-hub:someone/resnet10t"}}, "hub references are refused"),
    ],
)
def test_checkpoint_values_are_bounded(tmp_path, changes, message):
    from napari_stpredict.model import CheckpointError, load_model

    t0 = time.perf_counter()
    with pytest.raises(CheckpointError, match=f"crafted.pt.*{message}"):
        load_model(_crafted(tmp_path, **changes), device="cpu")
    assert time.perf_counter() - t0 < 30


# --- 12, 13: options checked before slow work -------------------------------------------------------
@pytest.mark.parametrize(
    "option, message",
    [
        (["--device", "bogus"], "--device"),
        (["--threshold", "nan"], "--threshold"),
        (["--stride-um", "0"], "--stride-um"),
        (["--stride-um", "-5"], "--stride-um"),
        (["--stride-um", "nan"], "--stride-um"),
        (["--stride-um", "13.9"], "--stride-um"),
        (["--markers", "FOO", "BAR"], "--markers"),
        (["--genes", "NOTAGENE"], "NOTAGENE"),
        (["--batch-size", "0"], "--batch-size"),
    ],
)
def test_bad_options_are_usage_errors_before_any_slide(option, message, tmp_path, capsys):
    from napari_stpredict.cli import main

    t0 = time.perf_counter()
    assert main(["predict", "--sample", "--out", str(tmp_path / "o"), *option]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "o").exists() and time.perf_counter() - t0 < 30


@pytest.mark.slow
def test_gene_names_take_the_models_spelling_and_genes_lists_them(
    sample_slide_path, tiny_model_path, tmp_path, monkeypatch, capsys
):
    from napari_stpredict.cli import main

    monkeypatch.setenv("STPREDICT_CACHE_DIR", str(tmp_path / "cache"))
    assert predict_cli(sample_slide_path, tiny_model_path, "--genes", "erbb2", "--out", str(tmp_path / "o")) == 0
    assert (tmp_path / "o" / "her2st_C2" / "ERBB2.tif").exists()
    capsys.readouterr()
    assert predict_cli(sample_slide_path, tiny_model_path, "--out", str(tmp_path / "o2")) == 0
    captured = capsys.readouterr()
    assert "(cached)" in captured.out and "spot/s" not in captured.err  # no progress bar for a cache hit
    assert main(["genes", "--sort", "accuracy"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == "gene\tr\tmarker_panel" and len(lines) == 2 + 795
    first = lines[2].split("\t")
    assert float(first[1]) > 0.3  # best gene first, with its held-out r
    erbb2 = next(line for line in lines if line.startswith("ERBB2\t")).split("\t")
    assert 0.2 < float(erbb2[1]) < 0.4 and erbb2[2] == "yes"


def test_slide_smaller_than_a_patch_and_a_coarse_slide_are_explained(tiny_model):
    from napari_stpredict.errors import TissueMaskError
    from napari_stpredict.inference import run_prediction
    from napari_stpredict.io.slide import ArraySlide

    tiny = ArraySlide(np.full((100, 100, 3), 200, np.uint8), mpp=0.5, name="tiny.png")
    with pytest.raises(TissueMaskError, match="tiny.png.*smaller than one 112 µm patch"):
        run_prediction(tiny, tiny_model)


@pytest.mark.slow
def test_coarse_slide_gets_a_warning(sample_slide_path):
    from napari_stpredict.inference import run_prediction
    from napari_stpredict.inference.trust import trust_lines
    from napari_stpredict.io.slide import ArraySlide
    from napari_stpredict.model import load_model

    model = load_model(device="cpu")  # reads patches at 1 µm/px

    with open_slide(sample_slide_path) as slide:
        small = slide.thumbnail(2500)  # the sample at ~2 µm/px
        mpp = slide.mpp_x * slide.dimensions[0] / small.shape[1]
    prediction = run_prediction(ArraySlide(small, mpp=mpp, name="coarse.tif"), model)
    assert prediction.trust.resolution.coarse
    assert any("coarser than" in line for line in trust_lines(prediction.meta))


# --- 9: one corrupt tile ------------------------------------------------------------------------------
def test_one_corrupt_region_does_not_spoil_the_rest_of_the_slide(sample_slide_path, tmp_path):
    import tifffile

    from napari_stpredict.errors import SlideReadError

    corrupt = tmp_path / "corrupt.tiff"
    shutil.copy(sample_slide_path, corrupt)
    with tifffile.TiffFile(corrupt) as tif:  # garble one tile in the middle of level 0
        page = tif.pages[0]
        per_row = -(-page.imagewidth // page.tilewidth)
        row, col = (-(-page.imagelength // page.tilelength)) // 2, per_row // 2
        index = row * per_row + col
        offset, count = page.dataoffsets[index], page.databytecounts[index]
        tile_xy = (col * page.tilewidth, row * page.tilelength)
    with open(corrupt, "r+b") as fh:
        fh.seek(offset)
        fh.write(b"\xff\x00" * (count // 2))
    with open_slide(corrupt) as slide:
        assert slide.backend == "openslide"
        good = slide.read_region((0, 0), 0, (64, 64))
        with pytest.raises(SlideReadError, match="corrupt.tiff.*region"):
            slide.read_region(tile_xy, 0, (64, 64))
        assert np.array_equal(slide.read_region((0, 0), 0, (64, 64)), good)  # still readable after the error


@pytest.mark.slow
def test_a_corrupt_tile_in_a_prediction_names_the_file_and_the_region(sample_slide_path, tmp_path, monkeypatch, capsys):
    """With several reader threads one meets the damage and replaces the handle another
    had picked up ("Passing closed slide object" before): the message names the file."""
    import tifffile

    monkeypatch.setenv("STPREDICT_CACHE_DIR", str(tmp_path / "cache"))
    corrupt = tmp_path / "corrupt.tiff"
    shutil.copy(sample_slide_path, corrupt)
    with tifffile.TiffFile(corrupt) as tif:  # garble a band of tiles through the tissue
        page = tif.pages[0]
        per_row = -(-page.imagewidth // page.tilewidth)
        row = (-(-page.imagelength // page.tilelength)) // 2
        spans = [(page.dataoffsets[row * per_row + c], page.databytecounts[row * per_row + c]) for c in range(per_row)]
    with open(corrupt, "r+b") as fh:
        for offset, count in spans:
            fh.seek(offset)
            fh.write(b"\xff\x00" * (count // 2))
    from napari_stpredict.model import default_model_path

    # the bundled model reads 1 µm/px, so level 0, where the damage is (the tiny one reads a coarser level)
    assert predict_cli(corrupt, default_model_path(), "--out", str(tmp_path / "o")) == 1
    err = capsys.readouterr().err
    assert "corrupt.tiff" in err and "corrupt or truncated image data in the region" in err, err
    assert "Passing closed slide object" not in err
    assert not (tmp_path / "o" / "corrupt").exists()


# --- 11: file names that identify a patient ---------------------------------------------------------------
@pytest.mark.slow
def test_pseudonymize_leaves_the_file_name_out_of_every_output(
    sample_slide_path, tiny_model_path, tmp_path, monkeypatch, capsys
):

    monkeypatch.setenv("STPREDICT_CACHE_DIR", str(tmp_path / "cache"))
    barcode = "TCGA-A2-A0T2-01Z-00-DX1"
    slide = tmp_path / f"{barcode}.tiff"
    shutil.copy(sample_slide_path, slide)
    assert predict_cli(slide, tiny_model_path, "--pseudonymize", "--out", str(tmp_path / "o")) == 0
    (folder,) = list((tmp_path / "o").iterdir())
    assert folder.name.startswith("slide-") and len(folder.name) == 18
    assert barcode in capsys.readouterr().out  # the user sees which file got which id
    for file in folder.iterdir():
        data = file.read_bytes()
        assert barcode.encode() not in data and b"TCGA" not in data, file.name
    import anndata as ad

    adata = ad.read_h5ad(folder / "prediction.h5ad")  # compressed on disk: look inside too
    assert "TCGA" not in json.dumps(adata.uns["stpredict"], default=str) and "TCGA" not in "".join(adata.obs_names)
    assert predict_cli(slide, tiny_model_path, "--pseudonymize", "--out", str(tmp_path / "o")) == 0
    assert [p.name for p in (tmp_path / "o").iterdir()] == [folder.name]  # stable id
    # the cache entry records no file name either (issue 25.3), and a cache hit of another
    # name of the same file shows that name, not the first one's
    (entry,) = (tmp_path / "cache").glob("*.h5ad")
    assert "TCGA" not in json.dumps(ad.read_h5ad(entry).uns["stpredict"], default=str)
    renamed = tmp_path / "patient_07.tiff"
    shutil.copy2(slide, renamed)  # content and time kept: the same cache entry
    assert predict_cli(renamed, tiny_model_path, "--out", str(tmp_path / "p")) == 0
    again = ad.read_h5ad(tmp_path / "p" / "patient_07" / "prediction.h5ad").uns["stpredict"]
    assert again["cache"] == "hit" and again["slide"]["name"] == "patient_07.tiff"


# --- 8: full and read-only file systems (a small tmpfs; needs root, as on this project's machines) ----------
@pytest.fixture
def small_fs(tmp_path):
    """Mount a tiny file system; yields a function (size, read_only) -> its folder."""
    mounted = []

    def mount(size: str, read_only: bool = False) -> Path:
        point = tmp_path / f"fs{len(mounted)}"
        point.mkdir()
        options = f"size={size}" + (",ro" if read_only else "")
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], capture_output=True)
        if result.returncode != 0:
            pytest.skip(f"platform: cannot mount a tmpfs here ({result.stderr.decode().strip()})")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", str(point)], capture_output=True)


def test_full_output_disk_is_a_clear_error_and_leaves_nothing(
    small_fs, sample_slide_path, tiny_model_path, tmp_path, monkeypatch, capsys
):

    monkeypatch.setenv("STPREDICT_CACHE_DIR", str(tmp_path / "cache"))
    full = small_fs("64k")
    assert predict_cli(sample_slide_path, tiny_model_path, "--out", str(full / "o")) == 1
    err = capsys.readouterr().err
    assert "her2st_C2.tiff" in err and "No space left" in err and "Traceback" not in err
    assert list((full / "o").iterdir()) == []  # no partial folder, no hidden leftovers


def test_read_only_output_is_a_usage_error(small_fs, tmp_path, capsys):
    from napari_stpredict.cli import main

    read_only = small_fs("1m", read_only=True)
    assert main(["predict", "--sample", "--out", str(read_only / "o")]) == 2
    assert "--out" in capsys.readouterr().err


@pytest.mark.slow
def test_full_cache_disk_only_costs_the_caching(small_fs, sample_slide_path, tiny_model_path, tmp_path, monkeypatch):

    monkeypatch.setenv("STPREDICT_CACHE_DIR", str(small_fs("16k")))
    with pytest.warns(UserWarning, match="could not be cached"):
        assert predict_cli(sample_slide_path, tiny_model_path, "--out", str(tmp_path / "o")) == 0
    assert (tmp_path / "o" / "her2st_C2" / "prediction.h5ad").exists()


# --- 14: in CI a skipped test fails the run ---------------------------------------------------------------------
@pytest.mark.slow
def test_a_skip_fails_the_run_in_ci(tmp_path):
    shutil.copy(Path(__file__).parent / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_skips.py").write_text("import pytest\n\ndef test_needs_data():\n    pytest.skip('no data')\n")
    run = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xvfb", str(tmp_path)]
    in_ci = subprocess.run(run, capture_output=True, text=True, env=dict(os.environ, CI="true"), cwd=tmp_path)
    local = subprocess.run(
        run, capture_output=True, text=True, env={k: v for k, v in os.environ.items() if k != "CI"}, cwd=tmp_path
    )
    assert in_ci.returncode == 1 and "every test must run" in in_ci.stdout, in_ci.stdout[-2000:]
    assert local.returncode == 0
