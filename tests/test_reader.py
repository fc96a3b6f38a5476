"""The npe2 reader: what it claims, the layer data it returns, and lazy reading."""

from __future__ import annotations

import numpy as np
import pytest

from napari_stpredict._reader import napari_get_reader, slide_layer_data, slide_of_layer
from napari_stpredict.errors import SlideError
from napari_stpredict.io.pyramid import level_chunks, slide_pyramid
from napari_stpredict.io.slide import ArraySlide, open_slide


def test_reader_claims_slides_and_declines_other_files(tmp_path, sample_slide_path, wsi_dir):
    import tifffile

    assert callable(napari_get_reader(str(sample_slide_path)))
    assert callable(napari_get_reader(str(wsi_dir / "CMU-1-Small-Region.svs")))
    assert callable(napari_get_reader([str(wsi_dir / "ndpi_test3-DAPI-2-387.ndpi")]))
    (tmp_path / "notes.txt").write_text("x")
    assert napari_get_reader(str(tmp_path / "notes.txt")) is None
    assert napari_get_reader(str(tmp_path / "photo.png")) is None  # napari's own business
    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, np.zeros((5, 32, 32), np.uint16))
    assert napari_get_reader(str(stack)) is None  # a 3-D grey stack is not a slide
    assert napari_get_reader([str(sample_slide_path), str(sample_slide_path)]) is None


def test_reader_for_a_corrupt_slide_raises_the_clear_error(tmp_path):
    bad = tmp_path / "broken.svs"
    bad.write_text("not a slide")
    reader = napari_get_reader(str(bad))  # never raises itself
    assert callable(reader)
    with pytest.raises(SlideError, match="broken.svs"):
        reader(str(bad))


def _strings(obj):
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _strings(k)
            yield from _strings(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _strings(v)


def test_layer_data_is_a_lazy_multiscale_in_um(sample_slide_path):
    reader = napari_get_reader(str(sample_slide_path))
    [(data, kwargs, layer_type)] = reader(str(sample_slide_path))
    assert layer_type == "image"
    assert kwargs["rgb"] and kwargs["multiscale"]
    assert kwargs["scale"] == pytest.approx((0.688, 0.688))
    assert [d.shape for d in data] == [(6300, 7400, 3), (3150, 3700, 3), (1575, 1850, 3), (788, 925, 3), (394, 463, 3)]
    assert all(type(d).__name__ == "LevelArray" for d in data)  # lazy, nothing read yet
    meta = kwargs["metadata"]
    assert meta["slide"]["name"] == "her2st_C2.tiff"
    # No folder path, label or macro image in the metadata (they can identify patients).
    for s in _strings(meta):
        assert str(sample_slide_path.parent) not in s
    assert not any(isinstance(v, np.ndarray) for v in meta["slide"].values())


def test_layer_data_without_mpp_is_in_pixels(wsi_dir):
    with open_slide(wsi_dir / "tcga-cr-7395-01a-01-ts1.svs") as slide:
        _, kwargs, _ = slide_layer_data(slide)
    assert "scale" not in kwargs


def test_chunks_are_whole_tiles(sample_slide_path, wsi_dir):
    with open_slide(sample_slide_path) as slide:
        for level, arr in enumerate(slide_pyramid(slide)):
            tile_w, tile_h = slide.tile_size(level)
            ch, cw = level_chunks(slide, level)
            full_h, full_w = arr.shape[:2]
            assert (ch % tile_h == 0 or ch == full_h) and (cw % tile_w == 0 or cw == full_w)
            assert arr.chunksize == (ch, cw)


class CountingSlide(ArraySlide):
    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.reads = []

    def _read_level(self, level, level_xy, size):
        self.reads.append((level, level_xy, size))
        return super()._read_level(level, level_xy, size)


def test_only_displayed_chunks_are_read():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (4096, 4096, 3), dtype=np.uint8)
    slide = CountingSlide(image, mpp=0.5, levels=4, tile=512)
    pyramid = slide_pyramid(slide)
    assert slide.reads == []
    view = np.asarray(pyramid[0][1100:1200, 2100:2200])  # inside one 512 px chunk
    assert len(slide.reads) == 1
    assert np.array_equal(view, image[1100:1200, 2100:2200])
    slide.reads.clear()
    np.asarray(pyramid[3][:, :])  # the whole coarsest level
    assert {r[0] for r in slide.reads} == {3}


def test_slide_of_layer_finds_the_open_slide(sample_slide_path):
    slide = open_slide(sample_slide_path)
    data, kwargs, _ = slide_layer_data(slide)

    class FakeLayer:  # only .metadata is used
        metadata = kwargs["metadata"]

    assert slide_of_layer(FakeLayer()) is slide


def test_pyramid_chunks_are_exact_on_levels_with_fractional_downsample(wsi_dir):
    """TCGA level 1 has downsample 2.0005: chunk reads must not drift by a pixel."""
    with open_slide(wsi_dir / "tcga-cr-7395-01a-01-ts1.svs", backend="tifffile") as slide:
        level1 = slide_pyramid(slide)[1]
        for y0, x0 in [(0, 0), (1024, 512), (1500, 2000)]:
            expected = slide.read_level_region(1, (x0, y0), (100, 100))
            assert np.array_equal(np.asarray(level1[y0 : y0 + 100, x0 : x0 + 100]), expected)


def test_opening_a_slide_and_reading_a_region_never_imports_dask(sample_slide_path):
    """dask.array's import alone was a quarter of a second of a fresh napari session's
    first slide (issue 20): the reader's arrays do without it."""
    import subprocess
    import sys

    script = (
        "import sys\n"
        "from napari_stpredict._reader import napari_get_reader\n"
        f"[(data, kwargs, _)] = napari_get_reader({str(sample_slide_path)!r})({str(sample_slide_path)!r})\n"
        "import numpy as np\n"
        "assert np.asarray(data[-1]).shape == data[-1].shape\n"
        "assert data[0][100:200, 300:400].shape == (100, 100, 3)\n"
        "print('dask' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_level_arrays_slice_like_numpy(sample_slide_path):
    """What napari may ask of a level: slices, steps, integers, an ellipsis, the whole."""
    with open_slide(sample_slide_path) as slide:
        level = slide_pyramid(slide)[3]
        whole = np.asarray(level)  # chunk by chunk, as napari reads it
        assert whole.shape == level.shape and whole.dtype == np.uint8
        for key in [
            (slice(10, 500), slice(20, 900)),
            (slice(None, None, 3), slice(5, None, 2)),
            (7, slice(None)),
            (slice(None), 11),
            (Ellipsis, 1),
            (slice(700, 900), slice(0, 50), slice(0, 2)),
            (-1, -1),
            (slice(780, 10_000), slice(None)),
        ]:
            assert np.array_equal(level[key], whole[key]), key
        with pytest.raises(IndexError):
            level[10_000, 0]


def test_first_view_levels_are_read_ahead_once_and_exactly():
    """`prefetch_first_view` reads the coarsest level and the fitted one in the background;
    napari's reads of them then wait for those reads instead of repeating them."""
    import time

    from napari_stpredict.io.pyramid import prefetch_first_view

    rng = np.random.default_rng(1)
    image = rng.integers(0, 255, (4096, 4096, 3), dtype=np.uint8)
    slide = CountingSlide(image, mpp=0.5, levels=4, tile=512)  # 4096, 2048, 1024, 512 px
    pyramid = slide_pyramid(slide)
    prefetch_first_view(pyramid)
    # read ahead: the fitted level (1,024 px: 4 chunks of 512) and the coarsest (1 chunk)
    deadline = time.monotonic() + 30
    while len(slide.reads) < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)
    assert sorted(r[0] for r in slide.reads) == [2, 2, 2, 2, 3]
    for level in (2, 3):
        np.testing.assert_array_equal(
            np.asarray(pyramid[level]),
            ArraySlide(image, mpp=0.5, levels=4, tile=512).read_level_region(
                level, (0, 0), slide.level_dimensions[level]
            ),
        )
    assert len(slide.reads) == 5  # napari's reads found the chunks read ahead


def test_a_failed_read_ahead_is_raised_by_the_view_that_needs_it(tmp_path):
    """A corrupt region met by the background read is reported when napari asks for it."""
    from napari_stpredict.io.pyramid import prefetch_first_view

    class FailingSlide(CountingSlide):
        def _read_level(self, level, level_xy, size):
            if level == 3:
                raise SlideError("broken.svs: corrupt or truncated image data in the region")
            return super()._read_level(level, level_xy, size)

    slide = FailingSlide(np.zeros((4096, 4096, 3), np.uint8), mpp=0.5, levels=4, tile=512)
    pyramid = slide_pyramid(slide)
    prefetch_first_view(pyramid)
    with pytest.raises(SlideError, match="broken.svs: corrupt"):
        np.asarray(pyramid[3])
