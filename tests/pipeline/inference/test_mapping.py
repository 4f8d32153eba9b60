"""Tiled mapping on real Dask clusters: invariance, GPU-resourced tasks, cluster errors, COG output."""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import xarray as xr

from pipeline.config.catalog import Catalog, parse_catalog
from pipeline.config.errors import CheckpointError, ClusterError
from pipeline.inference.classify import autocast_dtype, cpu_has_native_bf16
from pipeline.learn.sampling import Split
from pipeline.run import main as run_main
from pipeline.run import run

pytestmark = pytest.mark.slow
DASK = Path(sys.executable).parent / "dask"


def _catalog(trained: tuple[Catalog, Path], output: Path, **model: object) -> Catalog:
    catalog, checkpoint = trained
    data = catalog.model_dump(mode="json")
    data["model"].update({"checkpoint": str(checkpoint), **model})
    data["output"]["folder"] = str(output)
    return parse_catalog(data, catalog.path)


def _class_map(output: Path) -> np.ndarray:
    return xr.open_zarr(output / "demo" / "map.zarr", consolidated=False)["class"].values


@pytest.fixture(scope="module")
def reference(mapped_demo: tuple[Path, list]) -> tuple[Path, list]:
    return mapped_demo


def test_run_writes_georeferenced_outputs(reference: tuple[Path, list]) -> None:
    out, runs = reference
    scene = xr.open_zarr(out / "demo" / "scene.zarr")
    report = runs[0].report
    with rasterio.open(out / "demo" / "landcover.tif") as src:
        assert src.crs.to_string() == scene.attrs["crs"]
        assert list(src.transform)[:6] == pytest.approx(scene.attrs["transform"])
        assert (src.height, src.width) == (scene.sizes["y"], scene.sizes["x"])
        assert src.nodata == 0
        assert src.colormap(1)[1][:3] == (0xD6, 0x27, 0x28)
        assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"  # overviews: tests/pipeline/outputs/test_cog.py
        classes = src.read(1)
    assert np.array_equal(classes, _class_map(out))
    # Pixels with no modality available are nodata, every other pixel has a class.
    pattern = xr.open_zarr(out / "demo" / "map.zarr", consolidated=False)["pattern"].values
    assert np.array_equal(classes == 0, pattern == 0)
    # The report's held-out accuracy is the map's agreement with the labels outside the training split.
    labels = scene["labels"].values
    used = Split.load(runs[0].outputs["checkpoint"] / "split.npz").used_for_training(labels.shape)
    held_out = (labels > 0) & ~used & (classes > 0)
    assert report["accuracy"]["n"] == int(held_out.sum()) > 100
    assert report["accuracy"]["oa"] == pytest.approx(float((classes[held_out] == labels[held_out]).mean()))
    # The fixture trains 8 dense steps (measured OA 0.52; 0.98 with 8 patch steps): above chance (about 0.3).
    # How well the methods learn is tests/pipeline/learn/test_learning.py's business.
    assert report["accuracy"]["oa"] > 0.4
    for name in ("quicklook.png", "report.json", "stac-item.json", "confidence.tif", "availability.tif"):
        assert (out / "demo" / name).exists(), name
    mapping = json.loads((out / "demo" / "report.json").read_text())["mapping"]
    assert mapping["tiles"] == 10
    # 'auto' is bf16 only where this CPU has bf16 units; every tile says what it ran.
    expected = "bfloat16" if cpu_has_native_bf16() else "float32"
    assert mapping["precision"] == {"catalog": "auto", "tiles": {expected: 10}}
    assert mapping["inference"] == {"catalog": "dense", "path": "dense"}  # the demo catalog asks for it


def test_precision_auto_follows_the_hardware(caplog: pytest.LogCaptureFixture) -> None:
    cpu = torch.device("cpu")
    assert autocast_dtype(cpu, "float32") is None
    assert autocast_dtype(cpu, "auto") == (torch.bfloat16 if cpu_has_native_bf16() else None)
    with caplog.at_level(logging.WARNING, logger="pipeline.inference.classify"):
        assert autocast_dtype(cpu, "bfloat16") == torch.bfloat16  # an explicit choice is honoured
    assert ("emulates" in caplog.text) == (not cpu_has_native_bf16())


def test_run_writes_the_web_map_and_lists_it(reference: tuple[Path, list]) -> None:
    out, runs = reference
    page = out / "demo" / "map.html"
    assert page.is_file() and runs[0].report["outputs"]["webmap"] == str(page)
    stac = json.loads((out / "demo" / "stac-item.json").read_text())
    assert stac["assets"]["webmap"]["href"] == "map.html" and stac["assets"]["webmap"]["type"] == "text/html"


def test_same_map_whatever_the_tile_size_and_worker_count(trained_demo, reference, tmp_path: Path) -> None:
    # the reference ran the dense path (the demo catalog's model.inference: dense): halo = the receptive radius
    ref_out, _ = reference
    expected = _class_map(ref_out)
    for tile, workers in ((16, 2), (64, 1)):
        out = tmp_path / f"t{tile}w{workers}"
        run(_catalog(trained_demo, out), workers=workers, tile_size=tile, progress=False)
        got = _class_map(out)
        assert np.array_equal(got, expected), f"tile {tile}, {workers} workers: {(got != expected).sum()} pixels differ"


def test_patch_path_map_is_the_same_whatever_the_tile_size_and_worker_count(trained_demo, reference, tmp_path: Path) -> None:
    maps = {}
    for tile, workers in ((32, 1), (16, 2)):
        out = tmp_path / f"t{tile}w{workers}"
        runs = run(_catalog(trained_demo, out, inference="patch"), workers=workers, tile_size=tile, progress=False)
        assert runs[0].report["mapping"]["inference"] == {"catalog": "patch", "path": "patch"}
        maps[tile] = _class_map(out)
    assert np.array_equal(maps[16], maps[32]), f"{(maps[16] != maps[32]).sum()} pixels differ"
    # both paths leave exactly the pixels without any modality as nodata
    assert np.array_equal(_class_map(reference[0]) == 0, maps[32] == 0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def gpu_cluster(tmp_path: Path, dask_processes) -> Iterator[str]:
    """A real `dask scheduler` and two `dask worker` processes on loopback; the second advertises GPU=1
    (a resource label: the machine need not have a GPU, routing is what the tests check)."""
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    logs = tmp_path / "dask-logs"
    logs.mkdir()
    common = [str(DASK), "worker", address, "--nthreads", "1", "--no-dashboard", "--host", "127.0.0.1"]
    commands = {
        "scheduler": [str(DASK), "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
        "cpu": [*common, "--name", "cpu-worker"],
        "gpu": [*common, "--name", "gpu-worker", "--resources", "GPU=1"],
    }
    with contextlib.ExitStack() as stack:
        procs = []
        for name, command in commands.items():
            log_file = stack.enter_context(open(logs / f"{name}.log", "w"))
            procs.append(subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT))
            if name == "scheduler":
                time.sleep(2)
        with dask_processes(address, procs, 2):
            yield address


def test_external_scheduler_routes_every_tile_to_the_worker_advertising_gpu(trained_demo, reference, gpu_cluster: str, tmp_path: Path) -> None:
    from distributed import Client

    out = tmp_path / "ext"
    runs = run(_catalog(trained_demo, out), scheduler=gpu_cluster, tile_size=32, progress=False)
    with Client(gpu_cluster) as client:
        workers = client.scheduler_info()["workers"]
    gpu_address = next(a for a, w in workers.items() if w.get("resources", {}).get("GPU"))
    mapping = runs[0].report["mapping"]
    assert mapping["tiles_computed"] == 10
    assert mapping["workers"] == {gpu_address: 10}, "every classification task must land on the GPU-resourced worker"
    assert np.array_equal(_class_map(out), _class_map(reference[0]))


def test_required_gpu_without_gpu_workers_fails_cleanly(trained_demo, tmp_path: Path) -> None:
    catalog = _catalog(trained_demo, tmp_path / "out")
    catalog.cluster.gpu = "required"
    with pytest.raises(ClusterError, match="GPU"):
        run(catalog, workers=1, progress=False)
    assert not (tmp_path / "out" / "demo" / "map.zarr").exists()
    assert not (tmp_path / "out" / "demo" / "landcover.tif").exists()


def test_unreachable_scheduler_is_a_clear_error(trained_demo, tmp_path: Path, capsys) -> None:
    catalog = _catalog(trained_demo, tmp_path / "out")
    address = f"tcp://127.0.0.1:{_free_port()}"
    with pytest.raises(ClusterError, match="does not answer"):
        run(catalog, scheduler=address, progress=False)
    path = tmp_path / "catalog.yaml"
    import yaml

    path.write_text(yaml.safe_dump(catalog.model_dump(mode="json")))
    assert run_main([str(path), "--scheduler", address, "--quiet"]) == 1
    assert "does not answer" in capsys.readouterr().err


def test_checkpoint_with_other_bands_is_refused(trained_demo, tmp_path: Path) -> None:
    catalog, checkpoint = trained_demo
    data = catalog.model_dump(mode="json")
    config = json.loads((checkpoint / "config.json").read_text())
    config["model"]["bands"] = [60, 2]
    bad = tmp_path / "bad-ckpt"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps(config))
    (bad / "model.safetensors").write_bytes((checkpoint / "model.safetensors").read_bytes())
    data["model"]["checkpoint"] = str(bad)
    data["output"]["folder"] = str(tmp_path / "out")
    with pytest.raises(CheckpointError, match="band"):
        run(parse_catalog(data, catalog.path), workers=1, progress=False)
    assert not (tmp_path / "out" / "demo" / "landcover.tif").exists()


def test_a_modality_missing_everywhere_is_mapped_from_the_others(trained_demo, tmp_path: Path) -> None:
    catalog, checkpoint = trained_demo
    data = catalog.model_dump(mode="json")
    data["scenes"][0]["availability"]["failures"] = [{"modality": "lidar", "reason": "sensor failed"}]
    data["model"]["checkpoint"] = str(checkpoint)
    data["output"]["folder"] = str(tmp_path / "out")
    runs = run(parse_catalog(data, catalog.path), workers=1, progress=False)
    report = runs[0].report
    assert any("lidar" in note and "unavailable everywhere" in note for note in json.dumps(report).split('"'))
    pattern = xr.open_zarr(tmp_path / "out" / "demo" / "map.zarr", consolidated=False)["pattern"].values
    assert set(np.unique(pattern)) <= {0, 1}
    assert (_class_map(tmp_path / "out") > 0).sum() == (pattern == 1).sum() > 0


def test_output_folder_that_cannot_be_created(trained_demo, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    catalog = _catalog(trained_demo, blocker / "out")
    from pipeline.config.errors import InputError

    with pytest.raises(InputError, match="output.folder"):
        run(catalog, workers=1, progress=False)
