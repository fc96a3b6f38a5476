"""Model cards: the gene list and accuracy without torch, never describing another file,
and the commands that use them (``genes``, a cached ``predict`` rerun) without torch."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import yaml

# Run in a fresh interpreter: this test process imported torch long ago.
_NO_TORCH_AFTER = """
import sys
from napari_stpredict.cli import main
rc = main({argv!r})
assert rc == 0, rc
heavy = [m for m in ("torch", "torchvision", "timm") if m in sys.modules]
print("HEAVY:" + ",".join(heavy))
"""


def _run_without_torch(argv: list[str], env_extra: dict | None = None) -> str:
    import os

    env = {**os.environ, **(env_extra or {})}
    done = subprocess.run(
        [sys.executable, "-c", _NO_TORCH_AFTER.format(argv=argv)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_bundled_card_describes_the_bundled_checkpoint():
    from napari_stpredict.model import default_model_path, load_model, read_card

    card = read_card(default_model_path())
    assert card is not None, "the bundled model ships without a valid card (scripts/ship_model.py writes it)"
    model = load_model(device="cpu")
    assert card.genes == model.genes
    assert card.io.patch_um == model.io.patch_um and card.io.input_px == model.io.input_px
    assert card.evaluation["per_gene_r"] == model.evaluation["per_gene_r"]
    assert card.provenance["markers"] == model.provenance["markers"]
    assert card.retrieval == model.retrieval


def test_a_card_never_describes_a_changed_checkpoint(tiny_model_path, tmp_path):
    from napari_stpredict.model import LazyModel, card_path, open_model, read_card

    assert card_path(tiny_model_path).is_file(), "save_checkpoint writes the card"
    copy = tmp_path / "copy.pt"
    shutil.copy(tiny_model_path, copy)
    shutil.copy(card_path(tiny_model_path), card_path(copy))
    assert read_card(copy) is not None
    assert isinstance(open_model(copy, device="cpu"), LazyModel)
    with open(copy, "ab") as fh:  # the checkpoint replaced or edited after its card
        fh.write(b"\0")
    assert read_card(copy) is None
    card_path(copy).write_text("{not json", encoding="utf-8")
    assert read_card(copy) is None
    card_path(copy).unlink()
    assert read_card(copy) is None
    # Without a valid card the checkpoint is read at once (its damage reported up front).
    from napari_stpredict.model import CheckpointError

    try:
        open_model(copy, device="cpu")
    except CheckpointError as exc:
        assert "copy.pt" in str(exc)
    else:  # an appended zero byte may still be a loadable zip: then it is the real model
        assert not isinstance(open_model(copy, device="cpu"), LazyModel)


def test_lazy_model_loads_the_network_on_first_real_use(tiny_model_path):
    from napari_stpredict.model import open_model

    model = open_model(tiny_model_path, device="cpu")
    assert not model.loaded and len(model.genes) == 8 and "not loaded" in repr(model)
    assert len(model.bank) == 200  # anything the card does not hold loads the checkpoint
    assert model.loaded and str(model.device) == "cpu"


def test_genes_lists_the_models_genes_without_importing_torch():
    out = _run_without_torch(["genes", "--sort", "accuracy"])
    lines = out.splitlines()
    assert lines[-1] == "HEAVY:", lines[-1]
    assert lines[0].startswith("# 795 genes of cmrcnet_her2st.pt")
    rows = [line.split("\t") for line in lines[2:-1]]
    assert len(rows) == 795 and rows[0][1] != ""  # the best measured gene first


@pytest.mark.slow
def test_cached_predict_rerun_never_loads_the_model(sample_slide_path, tiny_model_path, tmp_path):
    cache = {"STPREDICT_CACHE_DIR": str(tmp_path / "cache")}
    argv = ["predict", str(sample_slide_path), "--model", str(tiny_model_path), "--out", str(tmp_path / "out")]
    first = _run_without_torch(argv, cache).splitlines()[-1]
    assert first == "HEAVY:torch,torchvision,timm" or first.startswith("HEAVY:torch"), first
    folder = tmp_path / "out" / "her2st_C2"
    before = json.loads(json.dumps(yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8"))))
    assert before["cache"] == "miss"
    again = _run_without_torch(argv, cache).splitlines()[-1]
    assert again == "HEAVY:", again
    after = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8"))
    assert after["cache"] == "hit" and after["device"].startswith("none")
    assert {k: v for k, v in after.items() if k not in ("cache", "device")} == {
        k: v for k, v in before.items() if k not in ("cache", "device")
    }
    for name in ("prediction.h5ad", "ERBB2.tif", "tumor_mask.tif", "tumor.geojson", "overview.png"):
        assert (folder / name).stat().st_size > 0, name
