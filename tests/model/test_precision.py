"""The CUDA precision policy (reduced-precision autocast, channels-last, pinned copies),
run on the CPU through the same code, held to its stated tolerance against float32."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_stpredict.model.precision import REDUCED_TOLERANCE, InferencePrecision, precision_for


@pytest.fixture(scope="module")
def model_and_patches(sample_slide_path):
    from napari_stpredict.io.patches import read_patches
    from napari_stpredict.io.slide import open_slide
    from napari_stpredict.model import load_model
    from napari_stpredict.tiling import spot_grid
    from napari_stpredict.tissue import slide_tissue_mask

    model = load_model(None, device="cpu")
    with open_slide(sample_slide_path) as slide:
        tissue = slide_tissue_mask(slide)
        grid = spot_grid(tissue.mask, tissue.l0_per_th, slide.mpp, patch_um=model.io.patch_um)
        patches = read_patches(slide, grid.l0_centres[:192], model.io.patch_um, model.io.input_px)
    yield model, patches
    model.set_precision(precision_for(model.device))


def _run(model, patches):
    embeddings, features = model.embed_with_features(patches)
    expression, _ = model.predict_embeddings(embeddings)
    return embeddings, features, expression.numpy()


def test_the_cpu_runs_float32_contiguous_unpinned():
    policy = precision_for(torch.device("cpu"))
    assert policy == InferencePrecision() and policy.name == "float32"
    x = torch.zeros(2, 3, 8, 8)
    assert policy.layout(x).is_contiguous() and policy.to_device(x, torch.device("cpu")) is x


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_reduced_precision_with_channels_last_stays_within_tolerance_of_float32(model_and_patches, dtype):
    model, patches = model_and_patches
    model.set_precision(InferencePrecision())
    ref_embeddings, ref_features, ref_expression = _run(model, patches)
    model.set_precision(InferencePrecision.reduced(dtype, pin_memory=True))
    conv = next(m for m in model.network.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert model.preprocess(patches[:2]).is_contiguous(memory_format=torch.channels_last)
    embeddings, features, expression = _run(model, patches)
    assert embeddings.dtype == features.dtype == torch.float32  # reduced inside, float32 out
    cosine = torch.nn.functional.cosine_similarity(embeddings, ref_embeddings)
    assert float(cosine.min()) >= REDUCED_TOLERANCE["embedding_cosine"]
    assert np.quantile(np.abs(expression - ref_expression), 0.99) <= REDUCED_TOLERANCE["expression_abs"]
    assert not np.array_equal(expression, ref_expression)  # the reduced path did run
    model.set_precision(InferencePrecision())
    assert np.array_equal(_run(model, patches)[2], ref_expression)  # and float32 is back exactly


def test_a_bad_reduced_dtype_is_refused():
    with pytest.raises(ValueError, match="bfloat16 or float16"):
        InferencePrecision.reduced("int8")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="platform: no CUDA device")
def test_cuda_runs_reduced_precision_channels_last_and_pinned(model_and_patches):
    model, patches = model_and_patches
    policy = precision_for(torch.device("cuda"))
    assert policy.autocast_dtype in (torch.bfloat16, torch.float16) and policy.channels_last and policy.pin_memory
    model.set_precision(InferencePrecision())
    _, _, ref = _run(model, patches)
    model.to("cuda")
    try:
        assert model.precision == policy
        embeddings, _ = model.embed_with_features(patches)
        expression = model.predict_embeddings(embeddings)[0].cpu().numpy()
        assert np.quantile(np.abs(expression - ref), 0.99) <= REDUCED_TOLERANCE["expression_abs"]
    finally:
        model.to("cpu")


def test_reading_threads_follow_the_device_and_the_cores():
    from napari_stpredict.model.precision import MAX_READ_THREADS, read_threads_for

    assert read_threads_for(torch.device("cpu"), cores=64) == 2  # the model needs the cores
    assert read_threads_for(torch.device("cuda"), cores=4) == 4
    assert read_threads_for(torch.device("cuda"), cores=64) == MAX_READ_THREADS
    assert read_threads_for(torch.device("cuda"), cores=1) == 2


@pytest.mark.slow
def test_the_gpu_check_says_there_is_no_cuda_device_and_exits_0():
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    if torch.cuda.is_available():
        pytest.skip("platform: a CUDA device is present (the check would measure it)")
    if shutil.which("bash") is None:
        pytest.skip("platform: no bash")
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.sh"
    done = subprocess.run(
        ["bash", str(script)], capture_output=True, text=True, env={**os.environ, "PYTHON": sys.executable}
    )
    assert done.returncode == 0, done.stderr
    assert "no CUDA device is present" in done.stdout
