"""open_slide on real files: geometry, resolution, backends agreeing, and bad input."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from napari_stpredict.errors import SlideError, SlideFormatError, SlideNotFoundError, SlideReadError
from napari_stpredict.io.slide import ArraySlide, open_slide

# Expected values written here from ../shared/data/README.md (and, for the tiny OpenSlide
# fixtures, from openslide-python's own test suite), not read back from a backend.
EXPECTED = {
    "CMU-1-Small-Region.svs": dict(dims=(2220, 2967), levels=1, mpp=0.499, vendor="aperio"),
    "tcga-cr-7395-01a-01-ts1.svs": dict(dims=(4443, 3567), levels=2, mpp=None, vendor="aperio"),
    "ndpi_test3-DAPI-2-387.ndpi": dict(dims=(3968, 4864), levels=7, mpp=0.228, vendor="hamamatsu"),
    "openslide-python_boxes.tiff": dict(dims=(300, 250), levels=4, mpp=None, vendor="generic-tiff"),
    "small_HE_levels.tiff": dict(dims=(300, 250), levels=4, mpp=None, vendor="generic-tiff"),
    "openslide-python_small.svs": dict(dims=(16, 16), levels=1, mpp=0.499, vendor="aperio"),
    "openslide-python_boxes_0.dcm": dict(dims=(16, 16), levels=1, mpp=0.499, vendor="dicom"),
    "openslide-python_boxes_1.dcm": dict(dims=(16, 16), levels=1, mpp=0.499, vendor="dicom"),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_real_slides_open_with_documented_geometry(wsi_dir, name):
    exp = EXPECTED[name]
    with open_slide(wsi_dir / name) as slide:
        assert slide.dimensions == exp["dims"]
        assert slide.level_count == exp["levels"]
        assert slide.vendor == exp["vendor"]
        assert slide.level_downsamples[0] == 1.0
        assert all(b > a for a, b in zip(slide.level_downsamples, slide.level_downsamples[1:]))
        if exp["mpp"] is None:
            assert slide.mpp == (None, None)
        else:
            assert slide.mpp_x == pytest.approx(exp["mpp"], abs=1e-3)
            assert slide.mpp_y == pytest.approx(exp["mpp"], abs=1e-3)
        region = slide.read_region((0, 0), slide.level_count - 1, (8, 8))
        assert region.shape == (8, 8, 3) and region.dtype == np.uint8


def test_sample_slide_geometry(sample_slide_path):
    with open_slide(sample_slide_path) as slide:
        assert slide.backend == "openslide"  # OpenSlide sees every level of the sample
        assert slide.dimensions == (7400, 6300)
        assert slide.level_count == 5
        assert slide.mpp_x == pytest.approx(0.688) and slide.mpp_y == pytest.approx(0.688)


def test_cmu_associated_images_exist_but_stay_out_of_summary(wsi_dir):
    with open_slide(wsi_dir / "CMU-1-Small-Region.svs") as slide:
        assert {"label", "macro", "thumbnail"} <= set(slide.associated_image_names)
        label = slide.associated_image("label")
        assert label.ndim == 3 and label.shape[2] == 3 and label.size > 0
        summary = slide.summary()
        assert str(wsi_dir) not in repr(summary)
        assert summary["name"] == "CMU-1-Small-Region.svs"
        assert not any(isinstance(v, np.ndarray) for v in summary.values())
        with pytest.raises(KeyError, match="CMU-1-Small-Region.svs"):
            slide.associated_image("barcode")


BOTH_BACKENDS = [
    "CMU-1-Small-Region.svs",
    "tcga-cr-7395-01a-01-ts1.svs",
    "openslide-python_boxes.tiff",
    "small_HE_levels.tiff",
]


def _compare_backends(path):
    with open_slide(path, backend="openslide") as a, open_slide(path, backend="tifffile") as b:
        assert a.level_dimensions == b.level_dimensions
        compared = 0
        for level in range(a.level_count):
            w, h = a.level_dimensions[level]
            ds = a.level_downsamples[level]
            # OpenSlide draws the tiles of a level whose downsample is not a whole number
            # (TCGA level 1: 2.0005) at fractional positions and interpolates them, so it
            # drifts from the stored pixels that tifffile returns. Compare the others.
            if abs(ds - round(ds)) > 1e-6:
                continue
            compared += 1
            for fx, fy in [(0.0, 0.0), (0.3, 0.4), (0.6, 0.55)]:
                size = (min(300, w), min(300, h))
                loc = (int(fx * w * ds), int(fy * h * ds))
                ra = a.read_region(loc, level, size).astype(float)
                rb = b.read_region(loc, level, size).astype(float)
                assert np.abs(ra - rb).mean() <= 2.0, (path.name, level, loc)
        assert compared >= 1


@pytest.mark.parametrize("name", BOTH_BACKENDS)
def test_openslide_and_tifffile_agree(wsi_dir, name):
    _compare_backends(wsi_dir / name)


def test_openslide_and_tifffile_agree_on_sample(sample_slide_path):
    _compare_backends(sample_slide_path)


def test_read_region_at_mpp_picks_a_level_and_resizes(sample_slide_path):
    with open_slide(sample_slide_path) as slide:
        # 112 µm at 0.5 µm/px from a 0.688 µm/px scan: read at level 0, upsample to 224 px.
        patch = slide.read_region_at_mpp((3000, 3000), (224, 224), mpp=0.5)
        assert patch.shape == (224, 224, 3)
        # At 4x the native mpp the best level is level 2 (downsample 4): same pixels.
        coarse = slide.read_region_at_mpp((2048, 2048), (128, 128), mpp=0.688 * 4)
        direct = slide.read_region((2048, 2048), 2, (128, 128))
        assert np.abs(coarse.astype(int) - direct.astype(int)).mean() < 1.0


def _smooth_image(size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(float)
    r = 128 + 100 * np.sin(2 * np.pi * xx / 256.0)
    g = 128 + 100 * np.cos(2 * np.pi * yy / 200.0)
    b = 128 + 60 * np.sin(2 * np.pi * (xx + yy) / 300.0)
    return np.stack([r, g, b], -1).round().astype(np.uint8)


def test_read_region_at_mpp_samples_the_right_place_on_a_synthetic_slide():
    base = _smooth_image(1024)
    slide = ArraySlide(base, mpp=0.25, levels=4)
    # 8x coarser from (64, 32): output pixel (i, j) is centred on level-0 (64 + 8j + 3.5, 32 + 8i + 3.5).
    patch = slide.read_region_at_mpp((64, 32), (100, 80), mpp=2.0).astype(float)
    assert slide.best_level_for_downsample(8.0) == 3
    rows = (32 + 8 * np.arange(80) + 3.5).round().astype(int)
    cols = (64 + 8 * np.arange(100) + 3.5).round().astype(int)
    expected = base[np.ix_(rows, cols)].astype(float)
    assert np.abs(patch - expected)[2:-2, 2:-2].mean() < 3


def test_regions_outside_the_slide_read_as_white(sample_slide_path):
    with open_slide(sample_slide_path) as slide:
        w, h = slide.dimensions
        region = slide.read_region((w - 10, h - 10), 0, (20, 20))
        assert (region[12:, :] == 255).all() and (region[:, 12:] == 255).all()


def test_missing_mpp_is_a_clear_error_and_can_be_supplied(wsi_dir, tmp_path):
    with open_slide(wsi_dir / "tcga-cr-7395-01a-01-ts1.svs") as slide:
        with pytest.raises(SlideFormatError, match="tcga-cr-7395-01a-01-ts1.svs.*mpp"):
            slide.read_region_at_mpp((0, 0), (32, 32), mpp=1.0)
    with open_slide(wsi_dir / "tcga-cr-7395-01a-01-ts1.svs", mpp=0.5) as slide:
        assert slide.mpp == (0.5, 0.5)
        assert slide.read_region_at_mpp((0, 0), (32, 32), mpp=1.0).shape == (32, 32, 3)


@pytest.mark.slow
def test_plain_jpeg_with_user_mpp(her2st_dir):
    jpg = next((her2st_dir / "ST-imgs" / "C" / "C3").glob("*.jpg"))
    with open_slide(jpg, mpp=0.688) as slide:
        assert slide.backend == "pillow"
        assert slide.dimensions[0] > 9000 and slide.mpp == (0.688, 0.688)
        assert slide.level_count > 1  # a display pyramid is built in memory


def test_reading_after_close_fails_clearly(sample_slide_path):
    slide = open_slide(sample_slide_path)
    slide.close()
    with pytest.raises(SlideReadError, match="closed"):
        slide.read_region((0, 0), 0, (4, 4))


# --- bad input ----------------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(SlideNotFoundError, match="nothere.svs"):
        open_slide(tmp_path / "nothere.svs")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.svs"
    path.write_bytes(b"")
    with pytest.raises(SlideReadError, match="empty.svs.*empty"):
        open_slide(path)


def test_text_file_renamed_svs(tmp_path):
    path = tmp_path / "notes.svs"
    path.write_text("patient notes, not a slide\n")
    with pytest.raises(SlideFormatError, match=r"notes\.svs.*Aperio SVS.*plain text"):
        open_slide(path)


def test_png_renamed_ndpi(tmp_path):
    from PIL import Image

    path = tmp_path / "scan.ndpi"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path, format="PNG")
    with pytest.raises(SlideFormatError, match=r"scan\.ndpi.*Hamamatsu NDPI.*PNG"):
        open_slide(path)


def test_truncated_svs(wsi_dir, tmp_path):
    data = (wsi_dir / "CMU-1-Small-Region.svs").read_bytes()
    path = tmp_path / "cut.svs"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(SlideReadError, match=r"cut\.svs.*truncated"):
        open_slide(path)


def test_truncated_tail_of_pyramid_tiff(sample_slide_path, tmp_path):
    # Cut inside the image data but after the first directory: openslide would open it.
    data = sample_slide_path.read_bytes()
    path = tmp_path / "partial.tiff"
    path.write_bytes(data[: int(len(data) * 0.9)])
    with pytest.raises(SlideReadError, match=r"partial\.tiff.*truncated"):
        open_slide(path)


def test_corrupt_tile_names_the_region(sample_slide_path, tmp_path):
    import tifffile

    path = tmp_path / "corrupt.tiff"
    shutil.copy(sample_slide_path, path)
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        tiles_per_row = -(-page.imagewidth // page.tilewidth)
        index = 10 * tiles_per_row + 12
        offset, count = page.dataoffsets[index], page.databytecounts[index]
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(b"\0" * count)
    for backend in ("openslide", "tifffile"):
        with open_slide(path, backend=backend) as slide:
            assert slide.read_region((0, 0), 0, (64, 64)).shape == (64, 64, 3)  # other tiles fine
            with pytest.raises(SlideReadError, match=r"corrupt\.tiff.*\(x, y\) = \(3082, 2570\)"):
                slide.read_region((12 * 256 + 10, 10 * 256 + 10), 0, (100, 100))


def test_unsupported_suffix(tmp_path):
    path = tmp_path / "slide.czi"
    path.write_bytes(b"ZISRAWFILE")
    with pytest.raises(SlideFormatError, match=r"slide\.czi.*unsupported"):
        open_slide(path)


def test_all_errors_share_a_base_class(tmp_path):
    path = tmp_path / "x.svs"
    path.write_text("x")
    with pytest.raises(SlideError):
        open_slide(path)


def test_array_slide_rejects_bad_arrays():
    with pytest.raises(SlideFormatError, match="uint8"):
        ArraySlide(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="mpp"):
        ArraySlide(np.zeros((4, 4, 3), np.uint8), mpp=-1)


# --- TIFFs that OpenSlide cannot read fully: tifffile takes them --------------------


def _sample_crop(sample_slide_path, size=1024):
    with open_slide(sample_slide_path) as slide:
        return slide.read_region((2500, 2000), 0, (size, size))


def test_ome_tiff_subifd_pyramid_opens_with_all_levels(sample_slide_path, tmp_path):
    import tifffile

    base = _sample_crop(sample_slide_path)
    levels = [base, base[::2, ::2].copy(), base[::4, ::4].copy()]
    path = tmp_path / "pyramid.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as tif:
        tif.write(
            levels[0],
            subifds=2,
            tile=(256, 256),
            compression="zlib",
            photometric="rgb",
            metadata={"axes": "YXS", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5},
        )
        for level in levels[1:]:
            tif.write(level, subfiletype=1, tile=(256, 256), compression="zlib", photometric="rgb")
    with open_slide(path) as slide:
        # OpenSlide would see one level only; the SubIFD pyramid needs tifffile.
        assert slide.backend == "tifffile" and slide.vendor == "ome-tiff"
        assert slide.level_dimensions == ((1024, 1024), (512, 512), (256, 256))
        assert slide.mpp == (0.5, 0.5)
        assert np.array_equal(slide.read_region((100, 200), 0, (300, 200)), base[200:400, 100:400])
        assert np.array_equal(slide.read_region((400, 400), 2, (50, 50)), levels[2][100:150, 100:150])


def test_stripped_tiff_opens_with_tifffile(sample_slide_path, tmp_path):
    import tifffile

    base = _sample_crop(sample_slide_path, 600)
    path = tmp_path / "stripped.tif"
    tifffile.imwrite(
        path, base, photometric="rgb", rowsperstrip=64, resolution=(1e4 / 0.25, 1e4 / 0.25), resolutionunit="CENTIMETER"
    )
    with open_slide(path) as slide:
        assert slide.backend == "tifffile"
        assert slide.dimensions == (600, 600) and slide.level_count == 1
        assert slide.tile_size(0) == (600, 64)
        assert slide.mpp_x == pytest.approx(0.25)
        assert np.array_equal(slide.read_region((590, 10), 0, (20, 20))[:, :10], base[10:30, 590:600])
        assert (slide.read_region((590, 10), 0, (20, 20))[:, 10:] == 255).all()


@pytest.mark.slow
def test_files_are_closed_when_done(sample_slide_path, wsi_dir):
    import gc

    import psutil

    proc = psutil.Process()

    def open_paths():
        return {Path(f.path).name for f in proc.open_files()}

    from pathlib import Path

    for path, backend in [
        (sample_slide_path, "openslide"),
        (sample_slide_path, "tifffile"),
        (wsi_dir / "CMU-1-Small-Region.svs", "auto"),
    ]:
        with open_slide(path, backend=backend) as slide:
            slide.read_region((0, 0), 0, (64, 64))
            if slide.backend == "tifffile":  # OpenSlide reopens its file per read instead
                assert path.name in open_paths()
        assert path.name not in open_paths()
        # and without close(): garbage collection releases the handle
        slide = open_slide(path, backend=backend)
        slide.read_region((0, 0), 0, (64, 64))
        del slide
        gc.collect()
        assert path.name not in open_paths()
