"""`stpredict cohort` on a real Dask LocalCluster with worker processes, the bundled model
and real slides: outputs equal `predict`, bad slides fail alone, killed workers and a
killed command lose nothing, a changed parameter recomputes."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import SHARED_DATA, WSI, _require

from napari_stpredict.cohort.record import RECORD_NAME, read_record

B4 = SHARED_DATA / "her2st" / "ST-imgs" / "B" / "B4" / "BT10737_D2_HE.jpg"
HER2ST_MPP = 0.688  # measured: 290 px per 200 µm spot pitch (shared/data/README.md)


def _cohort_cli(*args: str) -> int:
    from napari_stpredict.cli import main

    return main(["cohort", *[str(a) for a in args]])


def _copies(sample: Path, folder: Path, n: int) -> list[Path]:
    """``n`` copies of the sample slide, ``s0.tiff``... in ``folder`` (created)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"s{i}.tiff" for i in range(n)]
    for path in paths:
        shutil.copy(sample, path)
    return paths


def _complete_slides(out: Path) -> set[str]:
    """Names of the visible slide folders with a record: complete slides. (pathlib's ``*``
    also matches the hidden ``.s0.partial-...`` folder a worker is still filling.)"""
    return {p.parent.name for p in out.glob(f"*/{RECORD_NAME}") if not p.parent.name.startswith(".")}


def _start_cohort_command(slides: Path, out: Path, **popen) -> subprocess.Popen:
    """``stpredict cohort SLIDES --out OUT --workers 1`` as a process of its own, returned
    once its first slide is complete (and the process still runs)."""
    command = [sys.executable, "-m", "napari_stpredict.cli", "cohort", str(slides), "--out", str(out), "--workers", "1"]
    proc = subprocess.Popen(command, **popen)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not _complete_slides(out):
        time.sleep(0.2)
    if proc.poll() is not None:
        raise AssertionError("the cohort ended before its first slide could be seen complete")
    return proc


def _table(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "cohort.csv", keep_default_na=False).set_index("id")


@pytest.fixture(scope="module")
def cohort_dir(tmp_path_factory, sample_slide_path) -> Path:
    """Real slides under a manifest: the sample twice (one copy renamed), her2st B4 (mpp
    from the manifest), an Aperio SVS, a fluorescence NDPI, a truncated copy of the
    sample and a file that does not exist."""
    folder = tmp_path_factory.mktemp("cohort_slides")
    shutil.copy(sample_slide_path, folder / "patient_01.tiff")
    shutil.copy(sample_slide_path, folder / "her2st_C2.tiff")
    data = (folder / "her2st_C2.tiff").read_bytes()
    (folder / "truncated.tiff").write_bytes(data[: len(data) // 50])
    shutil.copy(_require(WSI / "CMU-1-Small-Region.svs"), folder / "CMU-1-Small-Region.svs")
    shutil.copy(_require(WSI / "ndpi_test3-DAPI-2-387.ndpi"), folder / "fluorescence.ndpi")
    rows = [
        {"slide": "patient_01.tiff", "mpp": "", "id": ""},
        {"slide": "her2st_C2.tiff", "mpp": "", "id": "C2"},
        {"slide": str(_require(B4)), "mpp": HER2ST_MPP, "id": "B4"},
        {"slide": "CMU-1-Small-Region.svs", "mpp": "", "id": ""},
        {"slide": "fluorescence.ndpi", "mpp": "", "id": ""},
        {"slide": "truncated.tiff", "mpp": "", "id": ""},
        {"slide": "not_there.svs", "mpp": "", "id": ""},
    ]
    with (folder / "manifest.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["slide", "mpp", "id"])
        writer.writeheader()
        writer.writerows(rows)
    return folder


@pytest.fixture(scope="module")
def cohort_run(cohort_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("cohort_out")
    status = _cohort_cli(cohort_dir / "manifest.csv", "--out", out, "--workers", 2, "--genes", "ERBB2", "GRB7")
    return status, out


def test_cohort_reports_bad_slides_and_completes_the_others(cohort_run):
    status, out = cohort_run
    table = _table(out)
    assert status == 1  # some slides failed
    assert set(table.index) == {
        "patient_01",
        "C2",
        "B4",
        "CMU-1-Small-Region",
        "fluorescence",
        "truncated",
        "not_there",
    }
    good = ["patient_01", "C2", "B4", "CMU-1-Small-Region"]
    assert (table.loc[good, "status"] == "done").all(), table[["status", "error"]]
    assert "not an H&E slide" in table.loc["fluorescence", "error"]
    assert "truncated" in table.loc["truncated", "error"]
    assert "not found" in table.loc["not_there", "error"]
    assert (table.loc[["fluorescence", "truncated", "not_there"], "status"] == "failed").all()
    for slide_id in ["fluorescence", "truncated", "not_there"]:
        assert not (out / slide_id).exists()  # no empty or partial folder for a failed slide
    assert not [p for p in out.iterdir() if ".partial-" in p.name]
    # the table names slides only as the user gave them (the manifest's cells)
    assert table.loc["patient_01", "slide"] == "patient_01.tiff"
    assert table.loc["B4", "slide"] == str(B4)
    # figures a person looks at, and the table as an AnnData
    for name in ("cohort_overview.png", "cohort_ERBB2.png", "cohort_GRB7.png", "cohort.h5ad", "cohort.log"):
        assert (out / name).stat().st_size > 0, name
    import anndata as ad

    adata = ad.read_h5ad(out / "cohort.h5ad")
    assert list(adata.var_names) == ["ERBB2", "GRB7"]
    assert adata.shape == (7, 2)
    assert np.isclose(adata[["B4"]].X[0, 0], float(table.loc["B4", "ERBB2_mean"]), atol=1e-4)
    log = (out / "cohort.log").read_text(encoding="utf-8")
    assert "truncated: failed" in log and "B4: done" in log


def test_cohort_table_columns_are_filled_for_done_slides(cohort_run):
    _, out = cohort_run
    table = _table(out)
    row = table.loc["C2"]
    assert float(row["tissue_mm2"]) > 1
    assert int(row["spots"]) > 100
    assert 0 < float(row["tumour_fraction"]) < 1
    assert 0 < float(row["mean_confidence"]) <= 1
    assert row["domain"] == "in domain" and row["stain"] == "he"
    assert float(row["ERBB2_tumour_mean"]) > float(row["ERBB2_mean"])  # tumour is called on ERBB2 among others
    assert float(row["seconds"]) > 0 and "pid" in row["worker"]
    # the copies of one slide under two names give the same figures
    for column in ("spots", "tumour_fraction", "ERBB2_mean", "GRB7_tumour_mean"):
        assert table.loc["patient_01", column] == table.loc["C2", column]
    # the slide out of the model's domain says so
    assert table.loc["CMU-1-Small-Region", "domain"] != "in domain"


@pytest.mark.parametrize("slide_id", ["C2", "B4"])
def test_cohort_outputs_equal_a_plain_predict(cohort_run, cohort_dir, slide_id, tmp_path):
    from conftest import predict_cli

    from napari_stpredict.inference.prediction import Prediction
    from napari_stpredict.model import default_model_path

    _, out = cohort_run
    slide, extra = (cohort_dir / "her2st_C2.tiff", []) if slide_id == "C2" else (B4, ["--mpp", str(HER2ST_MPP)])
    assert (
        predict_cli(
            slide, default_model_path(), "--out", str(tmp_path), "--genes", "ERBB2", "GRB7", "--no-cache", *extra
        )
        == 0
    )
    plain_folder = tmp_path / slide.stem
    cohort_folder = out / slide_id
    expected = {p.name for p in plain_folder.iterdir()}
    assert expected <= {p.name for p in cohort_folder.iterdir()}
    plain = Prediction.load(plain_folder / "prediction.h5ad")
    cohort = Prediction.load(cohort_folder / "prediction.h5ad")
    np.testing.assert_array_equal(plain.l0_centres, cohort.l0_centres)
    np.testing.assert_allclose(plain.adata.X, cohort.adata.X, atol=1e-4)
    import tifffile

    np.testing.assert_array_equal(
        tifffile.imread(plain_folder / "tumor_mask.tif"), tifffile.imread(cohort_folder / "tumor_mask.tif")
    )


def test_killing_a_worker_mid_cohort_still_completes_every_good_slide(sample_slide_path, tmp_path):
    """A worker process killed (by its pid) while it predicts a slide: the scheduler gives
    the slide to another worker and every slide completes."""
    import psutil
    from distributed import Client, LocalCluster

    from napari_stpredict.cohort import run_cohort

    slides = _copies(sample_slide_path, tmp_path, 4)
    killed: list[int] = []

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        with Client(cluster) as client:

            def kill_a_busy_worker() -> None:
                deadline = time.monotonic() + 120
                while time.monotonic() < deadline:
                    busy = [w for w, keys in client.processing().items() if keys]
                    if busy:
                        time.sleep(2.0)  # well inside the slide's prediction
                        pids = client.run(os.getpid, workers=busy[:1])
                        pid = next(iter(pids.values()))
                        psutil.Process(pid).kill()
                        killed.append(pid)
                        return
                    time.sleep(0.2)

            killer = threading.Thread(target=kill_a_busy_worker, daemon=True)
            killer.start()
            table = run_cohort(slides, out=tmp_path / "out", client=client, genes=["ERBB2"])
            killer.join(5)
            assert client.status != "closed"  # run_cohort leaves a client it was given open
    assert killed, "no worker was killed: the test did not test anything"
    assert (table["status"] == "done").all(), table[["id", "status", "error"]]
    # the slide the killed worker held was finished by another worker process
    assert not any(w.endswith(f"pid {killed[0]}") for w in table["worker"])
    for i in range(4):
        assert read_record(tmp_path / "out" / f"s{i}") is not None


def test_a_slide_that_kills_workers_is_marked_failed_and_not_retried_forever(sample_slide_path, tmp_path):
    from distributed import Client, LocalCluster, WorkerPlugin

    from napari_stpredict.cohort import run_cohort

    class KillOnSlide(WorkerPlugin):
        """Fault injection: the worker process dies when it starts this slide's task, as
        one whose reader segfaults or that exhausts memory would."""

        def transition(self, key, start, finish, **kwargs):
            if finish == "executing" and "stpredict-poison-" in str(key):
                os._exit(1)

    good = tmp_path / "good.tiff"
    poison = tmp_path / "poison.tiff"
    shutil.copy(sample_slide_path, good)
    shutil.copy(sample_slide_path, poison)
    import dask

    with dask.config.set({"distributed.scheduler.allowed-failures": 1}):
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    with cluster, Client(cluster) as client:
        client.register_plugin(KillOnSlide(), name="kill-on-poison")
        started = time.monotonic()
        table = run_cohort([good, poison], out=tmp_path / "out", client=client, genes=["ERBB2"]).set_index("id")
        elapsed = time.monotonic() - started
    assert table.loc["good", "status"] == "done"
    assert table.loc["poison", "status"] == "failed"
    assert "took down its worker repeatedly" in table.loc["poison", "error"]
    assert not (tmp_path / "out" / "poison").exists()
    assert elapsed < 180


def _kill_tree(proc: subprocess.Popen) -> None:
    import psutil

    parent = psutil.Process(proc.pid)
    for child in parent.children(recursive=True):
        child.kill()
    parent.kill()
    proc.wait(30)


def test_a_killed_command_resumes_without_redoing_finished_slides_and_a_changed_parameter_recomputes(
    sample_slide_path, tmp_path
):
    slides = tmp_path / "slides"
    _copies(sample_slide_path, slides, 4)
    out = tmp_path / "out"
    proc = _start_cohort_command(slides, out, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _kill_tree(proc)  # the command, its scheduler and its worker processes, all at once
    finished_before = _complete_slides(out)
    assert 1 <= len(finished_before) < 4
    visible = [p.name for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert sorted(visible) == sorted(finished_before)  # no half-written slide folder in sight

    assert _cohort_cli(slides, "--out", out, "--workers", 1) == 0
    table = _table(out)
    assert (table.loc[sorted(finished_before), "status"] == "reused").all()
    assert (table.drop(index=sorted(finished_before))["status"] == "done").all()
    recomputed = int((table["status"] == "done").sum())
    assert recomputed == 4 - len(finished_before)
    assert not [p for p in out.iterdir() if ".partial-" in p.name]

    # the same command again: nothing recomputed
    assert _cohort_cli(slides, "--out", out, "--workers", 1) == 0
    assert (_table(out)["status"] == "reused").all()

    # a changed parameter never reuses old results
    before = {s: read_record(out / s)["fingerprint"] for s in table.index}
    assert _cohort_cli(slides, "--out", out, "--workers", 1, "--threshold", "0.5") == 0
    changed = _table(out)
    assert (changed["status"] == "done").all()
    assert all(read_record(out / s)["fingerprint"] != before[s] for s in table.index)


def test_ctrl_c_stops_the_cohort_cleanly_and_keeps_finished_slides(sample_slide_path, tmp_path):
    """Ctrl-C (SIGINT to the command): a one-line message, exit 130, the LocalCluster's
    worker processes gone, finished slides kept for the rerun."""
    import signal

    import psutil

    if not hasattr(signal, "SIGINT"):
        pytest.skip("platform: no SIGINT")
    slides = tmp_path / "slides"
    _copies(sample_slide_path, slides, 3)
    out = tmp_path / "out"
    # A command started from a background job inherits SIGINT ignored (POSIX shells do that
    # to asynchronous commands), and Python then never raises KeyboardInterrupt: give the
    # command the default handler a terminal would.
    default_sigint = {"preexec_fn": lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)} if os.name == "posix" else {}
    proc = _start_cohort_command(
        slides, out, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **default_sigint
    )
    try:
        children = psutil.Process(proc.pid).children(recursive=True)
        assert children, "no worker process to check"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            _kill_tree(proc)
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted" in err and "Traceback" not in err
    gone, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, f"worker processes left running: {alive}"
    assert _complete_slides(out)


def test_pseudonymized_cohort_records_no_file_name(sample_slide_path, tmp_path):
    """Not in the good slide's outputs, nor in the errors of a damaged and a missing one
    (the table, its h5ad and the log are what one shares)."""
    name, broken, missing = "TCGA-XX-1234-01Z-00-DX1", "TCGA-YY-5678-01Z-00-DX1", "TCGA-ZZ-0000-01Z-00-DX1"
    slide = tmp_path / f"{name}.tiff"
    shutil.copy(sample_slide_path, slide)
    data = slide.read_bytes()
    (tmp_path / f"{broken}.tiff").write_bytes(data[: len(data) // 50])
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        f"slide\n{slide}\n{tmp_path / (broken + '.tiff')}\n{tmp_path / (missing + '.svs')}\n", encoding="utf-8"
    )
    out = tmp_path / "out"
    assert _cohort_cli(manifest, "--out", out, "--workers", 1, "--pseudonymize") == 1  # two slides fail
    table = _table(out)
    assert "slide" not in table.columns
    assert sorted(table["status"]) == ["done", "failed", "failed"]
    assert all(i.startswith(("slide-", "missing-")) for i in table.index)
    assert (table["error"] != "").sum() == 2
    for path in out.rglob("*"):
        for secret in (name, broken, missing):
            assert secret not in path.name
            if path.is_file() and path.suffix in (".csv", ".yaml", ".json", ".geojson", ".log", ".h5ad"):
                assert secret.encode() not in path.read_bytes(), path


def test_cohort_checks_options_and_slides_before_starting(tmp_path, capsys):
    assert _cohort_cli(tmp_path / "*.svs", "--out", tmp_path / "out") == 2
    assert "no file matches" in capsys.readouterr().err
    assert _cohort_cli(WSI, "--out", tmp_path / "out", "--genes", "NOTAGENE") == 2
    assert "NOTAGENE" in capsys.readouterr().err
    assert _cohort_cli(WSI, "--out", tmp_path / "out", "--workers", "0") == 2
    assert "--workers" in capsys.readouterr().err
    assert _cohort_cli(WSI, "--out", tmp_path / "out", "--scheduler", tmp_path / "scheduler.json") == 2
    assert "scheduler file not found" in capsys.readouterr().err
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,mpp\nx.svs,0.5\n", encoding="utf-8")
    assert _cohort_cli(manifest, "--out", tmp_path / "out") == 2
    assert "'slide' column" in capsys.readouterr().err
    manifest.write_text("slide,mpp\nx.svs,-1\n", encoding="utf-8")
    assert _cohort_cli(manifest, "--out", tmp_path / "out") == 2
    assert "line 2" in capsys.readouterr().err
    assert not (tmp_path / "out" / "cohort.csv").exists()


def test_a_scheduler_that_does_not_answer_is_a_clear_error(sample_slide_path, tmp_path, capsys):
    import socket

    import dask

    shutil.copy(sample_slide_path, tmp_path / "a.tiff")
    with socket.socket() as sock:  # a free port nobody listens on
        sock.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{sock.getsockname()[1]}"
    with dask.config.set({"distributed.comm.timeouts.connect": "2s"}):
        status = _cohort_cli(tmp_path / "a.tiff", "--out", tmp_path / "out", "--scheduler", address)
    assert status == 2
    assert f"--scheduler {address}: cannot connect" in capsys.readouterr().err
    assert not (tmp_path / "out" / "a").exists()


def test_resolve_slides_gives_unique_ids(tmp_path):
    from napari_stpredict.cohort import resolve_slides

    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "slide.svs").write_bytes(b"x")
    (tmp_path / "a" / "notes.txt").write_text("not a slide", encoding="utf-8")
    slides = resolve_slides([tmp_path / "a", str(tmp_path / "b" / "*.svs"), tmp_path / "a" / "slide.svs"])
    assert len(slides) == 2  # a slide named twice is predicted once
    ids = [s.id for s in slides]
    assert len(set(ids)) == 2 and all(i.startswith("slide-") for i in ids)


def test_import_napari_stpredict_does_not_load_distributed():
    code = "import sys, napari_stpredict, napari_stpredict.cohort; print('distributed' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


@pytest.mark.parametrize(
    ("limit", "message"),
    [("abc", "--memory-limit 'abc': not a memory size"), ("500MB", "--memory-limit 500MB: a worker needs at least")],
)
def test_a_memory_limit_it_cannot_use_is_refused_before_any_work(tmp_path, capsys, limit, message):
    out = tmp_path / "out"
    assert _cohort_cli(WSI / "CMU-1-Small-Region.svs", "--out", out, "--memory-limit", limit) == 2
    assert message in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())


def test_a_scheduler_lost_mid_cohort_still_writes_the_table_and_says_how_to_resume(sample_slide_path, tmp_path):
    """A running cluster (scheduler and worker processes on loopback) whose scheduler is
    killed after the first slide: the command ends with the finished slide in cohort.csv,
    the others failed with a message to rerun, and no traceback."""
    import socket

    slides = _copies(sample_slide_path, tmp_path / "slides", 3)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    bin_dir = Path(sys.executable).parent
    scheduler = subprocess.Popen(
        [str(bin_dir / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    worker = subprocess.Popen(
        [str(bin_dir / "dask"), "worker", address, "--nworkers", "1", "--nthreads", "1", "--no-dashboard"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    out = tmp_path / "out"
    try:
        command = [sys.executable, "-m", "napari_stpredict.cli", "cohort", str(tmp_path / "slides"), "--out", str(out)]
        proc = subprocess.Popen([*command, "--scheduler", address], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not _complete_slides(out):
            time.sleep(0.2)
        scheduler.kill()
        _, err = proc.communicate(timeout=180)
    finally:
        for p in (scheduler, worker):
            p.kill()
            p.wait(timeout=30)
    err = err.decode()
    assert proc.returncode == 1, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    table = _table(out)
    assert len(table) == len(slides)
    assert (table["status"] == "done").sum() >= 1
    lost = table[table["status"] == "failed"]
    assert len(lost) >= 1 and lost["error"].str.contains("run the same command again to resume").all()
