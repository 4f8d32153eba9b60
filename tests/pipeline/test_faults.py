"""Fault injection: a worker killed mid-run, the run itself killed and restarted, a corrupt scene chunk,
a truncated checkpoint. Real processes are killed with SIGKILL; real files are damaged on disk."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import psutil
import pytest
import xarray as xr
import yaml
import zarr
from distributed import Client, LocalCluster

from pipeline.config.catalog import Catalog
from pipeline.config.errors import CheckpointError, InputError
from pipeline.data.store import scene_store_path
from pipeline.inference.map_store import partial_path
from pipeline.inference.mapping import map_scene
from pipeline.run import main as run_main
from pipeline.run import run

pytestmark = pytest.mark.slow
TILE = 16  # 4 x 10 tiles on the 64 x 160 test scene: a run is long enough to be interrupted
ROOT = Path(__file__).resolve().parents[2]


def _map_arrays(store: Path) -> dict[str, np.ndarray]:
    ds = xr.open_zarr(store, consolidated=False)
    return {name: ds[name].values for name in ("class", "confidence", "pattern")}


def _assert_same_map(got: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    differ = int((got["class"] != expected["class"]).sum())
    assert differ == 0, f"{differ} pixels differ from the undisturbed run"
    assert np.array_equal(got["pattern"], expected["pattern"])
    np.testing.assert_allclose(got["confidence"], expected["confidence"], rtol=0, atol=1e-6)


def _done_tiles(map_store: Path) -> int:
    """Tiles marked done in the partial store of ``map_store`` (0 while it does not exist yet)."""
    try:
        return int(np.asarray(zarr.open_group(partial_path(map_store), mode="r")["done"][...]).sum())
    except (FileNotFoundError, KeyError, ValueError, OSError):
        return 0


def _wait_for_done(map_store: Path, at_least: int, timeout: float, alive) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = _done_tiles(map_store)
        if done >= at_least:
            return done
        assert alive(), "the run ended before it could be interrupted"
        time.sleep(0.05)
    raise AssertionError(f"fewer than {at_least} tiles done after {timeout} s")


@pytest.fixture(scope="module")
def cluster() -> Iterator[Client]:
    """Two single-threaded worker processes, as a laptop run uses them."""
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                      silence_logs=logging.ERROR) as local, Client(local) as client:
        yield client


@pytest.fixture(scope="module")
def scene_store(trained_demo: tuple[Catalog, Path]) -> Path:
    catalog, _ = trained_demo
    return scene_store_path(catalog.output.folder, catalog.scenes[0].name)


def _map(client: Client, trained: tuple[Catalog, Path], scene_store: Path, out: Path, checkpoint: Path | None = None):
    catalog, trained_checkpoint = trained
    return map_scene(client, scene_store, checkpoint or trained_checkpoint, out, TILE, catalog.output.batch_pixels,
                     catalog.model.precision, "never", torch_threads=1, progress=False)


@pytest.fixture(scope="module")
def reference(trained_demo, scene_store: Path, cluster: Client, tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    """The map of an undisturbed run."""
    out = tmp_path_factory.mktemp("faults-reference") / "map.zarr"
    result = _map(cluster, trained_demo, scene_store, out)
    assert result.tiles_computed == result.tiles_total == 40
    return _map_arrays(out)


def test_worker_killed_during_mapping_still_gives_the_same_map(trained_demo, scene_store, cluster, reference, tmp_path) -> None:
    out = tmp_path / "map.zarr"
    pids = cluster.run(os.getpid)  # worker address -> pid of the worker process (not its nanny)
    victim = next(iter(pids.values()))
    with ThreadPoolExecutor(1) as pool:
        running: Future = pool.submit(_map, cluster, trained_demo, scene_store, out)
        done_at_kill = _wait_for_done(out, 3, timeout=120, alive=lambda: not running.done())
        os.kill(victim, signal.SIGKILL)
        result = running.result(timeout=300)
    assert done_at_kill < result.tiles_total, "the worker was killed after the work was over"
    assert result.tiles_computed == result.tiles_total
    assert not psutil.pid_exists(victim) or psutil.Process(victim).status() == psutil.STATUS_ZOMBIE
    assert (out / "zarr.json").exists() and not partial_path(out).exists()
    _assert_same_map(_map_arrays(out), reference)
    cluster.wait_for_workers(2, timeout=60)  # the nanny restarted the killed worker


def test_run_killed_and_restarted_resumes_with_the_same_map(trained_demo, reference, tmp_path, with_checkpoint) -> None:
    import json

    out = tmp_path / "out"
    catalog = with_checkpoint(trained_demo[0], trained_demo[1], out)
    catalog_file = tmp_path / "catalog.yaml"
    catalog_file.write_text(yaml.safe_dump(catalog.model_dump(mode="json")))
    command = [sys.executable, "-m", "pipeline.run", str(catalog_file), "--workers", "2", "--tile-size", str(TILE), "--quiet"]
    map_store = out / "demo" / "map.zarr"
    first = subprocess.Popen(command, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_done(map_store, 3, timeout=180, alive=lambda: first.poll() is None)
        tree = [first.pid, *(p.pid for p in psutil.Process(first.pid).children(recursive=True))]
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the run and its Dask workers, as an OOM killer or a power cut would
        first.wait(timeout=30)
    assert len(tree) >= 3, "the run had no worker processes to kill"
    deadline = time.monotonic() + 30
    while any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in tree) and time.monotonic() < deadline:
        time.sleep(0.1)
    done_before = _done_tiles(map_store)
    assert not map_store.exists() and 3 <= done_before < 40

    second = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-2000:]
    mapping = json.loads((out / "demo" / "report.json").read_text())["mapping"]
    assert mapping["tiles"] == 40
    assert mapping["tiles_computed"] == 40 - done_before, "the restarted run must classify only the missing tiles"
    _assert_same_map(_map_arrays(map_store), reference)
    assert not partial_path(map_store).exists()


def test_corrupt_chunk_in_the_scene_store_is_named(trained_demo, scene_store, cluster, tmp_path) -> None:
    damaged = tmp_path / "scene.zarr"
    shutil.copytree(scene_store, damaged)
    chunk = damaged / "hs" / "c" / "0" / "1" / "2"
    assert chunk.is_file()
    chunk.write_bytes(b"\x00garbage, not a zstd frame" * 40)
    out = tmp_path / "map.zarr"
    with pytest.raises(InputError) as caught:
        _map(cluster, trained_demo, damaged, out)
    message = str(caught.value)
    assert "hs chunk c/0/1/2" in message and "readable chunk" in message
    assert caught.value.file == damaged
    assert not out.exists(), "no final map may be left by a failed run"


def test_corrupt_chunk_is_named_when_training_reads_it(trained_demo, scene_store, tmp_path) -> None:
    from pipeline.data.patches import Window, read_window

    damaged = tmp_path / "scene.zarr"
    shutil.copytree(scene_store, damaged)
    (damaged / "lidar" / "c" / "0" / "0" / "3").write_bytes(b"not a chunk")
    ds = xr.open_zarr(damaged)
    assert read_window(ds, ["hs", "lidar"], Window(0, 0, 16, 16), 2).values["lidar"].shape == (2, 20, 20)
    with pytest.raises(InputError, match="lidar chunk c/0/0/3"):
        read_window(ds, ["hs", "lidar"], Window(0, 90, 16, 16), 2)


@pytest.mark.parametrize("keep_bytes", [6, "half"])
def test_truncated_checkpoint_is_refused(trained_demo, tmp_path, keep_bytes, capsys, with_checkpoint) -> None:
    _, checkpoint = trained_demo
    bad = tmp_path / "checkpoint"
    shutil.copytree(checkpoint, bad)
    weights = bad / "model.safetensors"
    size = weights.stat().st_size
    with open(weights, "r+b") as f:
        f.truncate(size // 2 if keep_bytes == "half" else keep_bytes)
    out = tmp_path / "out"
    catalog = with_checkpoint(trained_demo[0], bad, out)
    with pytest.raises(CheckpointError) as caught:
        run(catalog, workers=1, progress=False)
    assert caught.value.file == bad and caught.value.key == "model.checkpoint"
    assert "model.safetensors" in str(caught.value)
    assert not (out / "demo" / "map.zarr").exists() and not partial_path(out / "demo" / "map.zarr").exists()
    assert not (out / "demo" / "landcover.tif").exists()
    catalog_file = tmp_path / "catalog.yaml"
    catalog_file.write_text(yaml.safe_dump(catalog.model_dump(mode="json")))
    assert run_main([str(catalog_file), "--quiet"]) == 1
    assert "model.safetensors" in capsys.readouterr().err
