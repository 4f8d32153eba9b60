"""Object storage: URL catalogs, stores and exports on a real S3 API, workers that share no disk.

The S3 API is moto's threaded server on loopback (started and stopped here, no network);
the Dask scheduler and workers are real ``dask`` processes, each worker in its own empty
working folder, reaching the data only through the object store. A second server (plain
``http.server`` with range requests) serves a COG to check that inputs are read window by
window.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import rasterio.shutil
import yaml
import zarr
from rasterio.transform import from_origin
from upath import UPath

from pipeline.config.catalog import Catalog, load_catalog, parse_catalog
from pipeline.config.errors import CatalogError
from pipeline.data.sources import read_source
from pipeline.datasets.demo import demo_catalog_dict
from pipeline.files import atomic_directory, atomic_file, write_text
from pipeline.storage import (
    as_location,
    gdal_config,
    gdal_path,
    is_complete,
    local_copy,
    open_zarr,
    resolve_against,
)

ROOT = Path(__file__).resolve().parents[2]
DASK = Path(sys.executable).parent / "dask"
BUCKET = "mmlc"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------- locations (no server)


def test_urls_and_paths_resolve_against_the_catalog_location() -> None:
    remote = UPath("s3://bucket/catalogs/demo.yaml", endpoint_url="http://127.0.0.1:9")
    resolved = resolve_against(remote.parent, Path("../data/hs.tif"))
    assert str(resolved) == "s3://bucket/data/hs.tif"
    assert resolved.storage_options["endpoint_url"] == "http://127.0.0.1:9"
    assert resolve_against(Path("/cat"), Path("../data/x.tif")) == Path("/data/x.tif")
    assert str(resolve_against(Path("/cat"), as_location("gs://b/k.tif"))) == "gs://b/k.tif"
    assert gdal_path(as_location("s3://bucket/a/b.tif")) == "/vsis3/bucket/a/b.tif"
    assert gdal_path(as_location("https://host:8/a.tif")) == "/vsicurl/https://host:8/a.tif"
    assert gdal_path(Path("/x/y.tif")) == "/x/y.tif"
    assert gdal_config({"endpoint_url": "http://127.0.0.1:5000"}) == {
        "AWS_S3_ENDPOINT": "127.0.0.1:5000", "AWS_HTTPS": "NO", "AWS_VIRTUAL_HOSTING": "FALSE"}


def test_catalog_with_urls_keeps_them_and_refuses_credentials(small_demo_files: dict[str, Path], tmp_path: Path) -> None:
    data = demo_catalog_dict(small_demo_files["hs"].parent, tmp_path / "out")
    data["scenes"][0]["modalities"][0]["source"]["path"] = "s3://bucket/scene/hs.tif"
    data["output"]["folder"] = "s3://bucket/outputs"
    data["storage"] = {"endpoint_url": "http://127.0.0.1:9", "anonymous": True}
    catalog = parse_catalog(data, tmp_path / "demo.yaml")
    hs = catalog.scenes[0].modalities[0].source.path
    assert str(hs) == "s3://bucket/scene/hs.tif"
    assert hs.storage_options["endpoint_url"] == "http://127.0.0.1:9" and hs.storage_options["anon"] is True
    assert str(catalog.output.folder) == "s3://bucket/outputs"
    assert catalog.model_dump(mode="json")["output"]["folder"] == "s3://bucket/outputs"
    data["storage"] = {"options": {"secret": "x"}}
    with pytest.raises(CatalogError, match="storage.options.*no credentials in a catalog"):
        parse_catalog(data, tmp_path / "demo.yaml")


# ----------------------------------------------------------------------------- S3 on loopback


@pytest.fixture(scope="module")
def s3() -> Iterator[dict[str, str]]:
    """moto's S3 server on 127.0.0.1 (a free port) and the environment that points every tool at it."""
    pytest.importorskip("moto.server")
    import boto3
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = {
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,  # botocore/s3fs
        "AWS_S3_ENDPOINT": f"127.0.0.1:{port}", "AWS_HTTPS": "NO", "AWS_VIRTUAL_HOSTING": "FALSE",  # GDAL
    }
    with pytest.MonkeyPatch.context() as mp:
        for name, value in env.items():
            mp.setenv(name, value)
        cache = tempfile.mkdtemp(prefix="mmlc-cache-")
        mp.setenv("MMLC_CACHE", cache)
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=BUCKET)
        try:
            yield {**env, "endpoint": endpoint}
        finally:
            server.stop()
            shutil.rmtree(cache, ignore_errors=True)


def _upload(local: Path, url: str) -> None:
    import s3fs

    fs = s3fs.S3FileSystem()
    fs.put(str(local), url, recursive=local.is_dir())


def _s3_catalog_dict(files: dict[str, Path], endpoint: str, checkpoint: str) -> dict[str, Any]:
    """The small demo catalog (32-pixel tiles) with every path relative to s3://<bucket>/catalogs/demo.yaml."""
    data = demo_catalog_dict(files["hs"].parent, Path("unused"), output={"tile_size": 32})
    scene = data["scenes"][0]

    def rel(path: str) -> str:
        return f"../scene/{Path(path).name}"

    for modality in scene["modalities"]:
        modality["source"]["path"] = rel(modality["source"]["path"])
    for cloud in scene["availability"]["clouds"]:
        cloud["path"] = rel(cloud["path"])
    for failure in scene["availability"]["failures"]:
        failure["footprint"] = rel(failure["footprint"])
    scene["labels"]["source"]["path"] = rel(scene["labels"]["source"]["path"])
    data["output"]["folder"] = "../outputs"
    data["model"]["checkpoint"] = checkpoint
    data["storage"] = {"endpoint_url": endpoint}
    return data


@pytest.fixture(scope="module")
def s3_demo(s3: dict[str, str], small_demo_files: dict[str, Path], trained_demo: tuple[Catalog, Path]) -> str:
    """The demo scene, its catalog and a trained checkpoint on the bucket; returns the catalog's URL."""
    _upload(small_demo_files["hs"].parent, f"{BUCKET}/scene")
    _upload(trained_demo[1], f"{BUCKET}/models/mamol")
    data = _s3_catalog_dict(small_demo_files, s3["endpoint"], "../models/mamol")
    url = f"s3://{BUCKET}/catalogs/demo.yaml"
    write_text(url, yaml.safe_dump(data, sort_keys=False))
    return url


@pytest.fixture(scope="module")
def local_reference(mapped_demo: tuple[Path, list]) -> Path:
    """The same scene and checkpoint mapped from local files by a local cluster: the map to match."""
    return mapped_demo[0] / "demo"


@pytest.fixture(scope="module")
def diskless_cluster(s3: dict[str, str], dask_processes) -> Iterator[str]:
    """A `dask scheduler` and two `dask worker` processes, each in its own empty folder, sharing no disk with the test."""
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    # Credentials only: the endpoint reaches the workers from the catalog's storage section, with each task.
    credentials = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **{k: s3[k] for k in credentials}}
    folders = [Path(tempfile.mkdtemp(prefix=f"mmlc-{name}-")) for name in ("scheduler", "worker-a", "worker-b")]
    scheduler = [str(DASK), "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"]
    worker = [str(DASK), "worker", address, "--nthreads", "1", "--no-dashboard", "--host", "127.0.0.1"]
    commands = [(scheduler, {}), *(([*worker, "--name", folder.name, "--local-directory", str(folder / "dask")],
                                    {"MMLC_CACHE": str(folder / "cache")}) for folder in folders[1:])]  # its own cache
    with contextlib.ExitStack() as stack:
        procs = []
        for folder, (command, extra) in zip(folders, commands):
            log_file = stack.enter_context(open(folder / "log", "w"))
            procs.append(subprocess.Popen(command, cwd=folder, env={**env, "HOME": str(folder), **extra},
                                          stdout=log_file, stderr=subprocess.STDOUT))
        try:
            with dask_processes(address, procs, workers=2):
                yield address
        finally:
            for folder in folders:
                shutil.rmtree(folder, ignore_errors=True)


def _map_classes(store: Any) -> np.ndarray:
    return open_zarr(store, consolidated=False)["class"].values


@pytest.mark.slow
def test_s3_catalog_on_diskless_workers_gives_the_local_map(s3_demo: str, diskless_cluster: str, local_reference: Path) -> None:
    from pipeline.run import run

    catalog = load_catalog(s3_demo)  # the catalog itself is read from the object store
    assert str(catalog.output.folder) == f"s3://{BUCKET}/outputs"
    runs = run(catalog, scheduler=diskless_cluster, progress=False)
    report = runs[0].report
    assert set(report["mapping"]["workers"]) and len(report["mapping"]["workers"]) == 2  # both diskless workers mapped
    out = as_location(f"s3://{BUCKET}/outputs/demo")
    assert is_complete(out / "scene.zarr") and is_complete(out / "map.zarr")
    expected = _map_classes(local_reference / "map.zarr")
    got = _map_classes(out / "map.zarr")
    assert np.array_equal(got, expected), f"{int((got != expected).sum())} pixels differ from the local run"

    # The class COG, read back from the bucket by GDAL (/vsis3/, endpoint and credentials from the environment).
    with rasterio.open(f"/vsis3/{BUCKET}/outputs/demo/landcover.tif") as remote, \
            rasterio.open(local_reference / "landcover.tif") as local:
        assert remote.crs == local.crs and remote.crs.to_string() == "EPSG:32632"
        assert remote.transform == local.transform
        assert remote.colormap(1) == local.colormap(1)
        assert remote.colormap(1)[1][:3] == (0xD6, 0x27, 0x28)
        assert np.array_equal(remote.read(1), expected)
    item = json.loads(as_location(f"s3://{BUCKET}/outputs/demo/stac-item.json").read_text())
    hrefs = {name: asset["href"] for name, asset in item["assets"].items()}
    assert hrefs["landcover"] == f"s3://{BUCKET}/outputs/demo/landcover.tif"
    assert all(h.startswith(f"s3://{BUCKET}/outputs/demo/") for h in hrefs.values()), hrefs
    assert as_location(f"s3://{BUCKET}/outputs/demo/quicklook.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.slow
def test_killed_run_resumes_on_the_object_store(s3_demo: str, diskless_cluster: str, local_reference: Path,
                                                tmp_path: Path) -> None:
    """``python -m pipeline.run`` killed mid-map: the map has no completion marker; the next run maps only the missing tiles."""
    from pipeline.run import run

    url = s3_demo  # the scene store of an earlier run is reused (unchanged inputs); the map is new (other tile size)
    final = as_location(f"s3://{BUCKET}/outputs/demo/map.zarr")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # 16-pixel tiles (40 of them): the map is the same whatever the tile size, and the run lasts long enough to kill.
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.run", url, "--scheduler", diskless_cluster, "--tile-size", "16",
                             "--quiet"], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done_at_kill = 0
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                done = zarr.open_group(str(final), mode="r", storage_options=final.storage_options)["done"][...]
                done_at_kill = int(done.sum()) if done.shape == (4, 10) else 0  # (4, 10): this run's store, not the last one
            except (FileNotFoundError, KeyError):
                done_at_kill = 0
            if done_at_kill >= 2:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
    assert 2 <= done_at_kill < 40, f"the run was not caught mid-map ({done_at_kill} of 40 tiles done)"
    assert not is_complete(final)  # no marker: nobody takes the partial map for a result

    runs = run(load_catalog(url), scheduler=diskless_cluster, tile_size=16, progress=False)
    mapping = runs[0].report["mapping"]
    assert mapping["tiles"] == 40 and done_at_kill <= 40 - mapping["tiles_computed"] < 40
    assert is_complete(final)
    got = _map_classes(final)
    expected = _map_classes(local_reference / "map.zarr")
    assert np.array_equal(got, expected), f"{int((got != expected).sum())} pixels differ after resuming"


# ----------------------------------------------------------------------------- atomic writes on S3


def test_remote_files_and_directories_appear_complete_or_not_at_all(s3: dict[str, str]) -> None:
    target = as_location(f"s3://{BUCKET}/atomic/value.txt")
    with pytest.raises(RuntimeError), atomic_file(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert not target.exists()
    write_text(target, "whole")
    assert target.read_text() == "whole"

    folder = as_location(f"s3://{BUCKET}/atomic/checkpoint")
    with atomic_directory(folder) as staging:
        (staging / "config.json").write_text("{}")
        (staging / "sub").mkdir()
        (staging / "sub" / "w.bin").write_bytes(b"1234")
    assert is_complete(folder) and (folder / "sub" / "w.bin").read_bytes() == b"1234"
    copy_ = local_copy(folder)
    assert (copy_ / "config.json").read_text() == "{}" and (copy_ / "sub" / "w.bin").read_bytes() == b"1234"
    with pytest.raises(RuntimeError), atomic_directory(folder) as staging:
        (staging / "config.json").write_text('{"new": 1}')
        raise RuntimeError("killed")
    assert is_complete(folder) and (folder / "config.json").read_text() == "{}"  # the old result stays


# ----------------------------------------------------------------------------- remote COG by HTTP range requests


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files with single ``Range: bytes=a-b`` requests, counting the body bytes sent."""

    sent: list[int]

    def log_message(self, *args: Any) -> None:
        pass

    def send_head(self):  # type: ignore[no-untyped-def]
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return None
        size = path.stat().st_size
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        start, end = (int(match[1]), min(int(match[2] or size - 1), size - 1)) if match else (0, size - 1)
        handle = path.open("rb")
        handle.seek(start)
        self.send_response(206 if match else 200)
        self.send_header("Content-Type", "image/tiff")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(end - start + 1))
        if match:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        self._remaining = end - start + 1
        return handle

    def copyfile(self, source, outputfile) -> None:  # type: ignore[no-untyped-def]
        data = source.read(self._remaining)
        self.sent.append(len(data))
        outputfile.write(data)


def test_remote_cog_is_read_window_by_window(tmp_path: Path) -> None:
    served = tmp_path / "served"
    served.mkdir()
    cog = served / "big.tif"
    rng = np.random.default_rng(0)
    data = rng.random((4, 1024, 1024), dtype=np.float32)  # random: incompressible, 16 MiB
    profile = {"driver": "GTiff", "height": 1024, "width": 1024, "count": 4, "dtype": "float32", "crs": "EPSG:32632",
               "transform": from_origin(600000, 5100000, 1, 1), "tiled": True, "blockxsize": 256, "blockysize": 256}
    scratch = tmp_path / "scratch.tif"
    with rasterio.open(scratch, "w", **profile) as dst:
        dst.write(data)
    rasterio.shutil.copy(scratch, cog, driver="COG", BLOCKSIZE=256, COMPRESS="NONE", OVERVIEWS="NONE")

    sent: list[int] = []
    handler = functools.partial(type("Handler", (_RangeHandler,), {"sent": sent}), directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/big.tif"
        catalog = parse_catalog({
            "name": "remote-cog",
            "scenes": [{"name": "s", "grid": {"from_modality": "hs"},
                        "modalities": [{"name": "hs", "kind": "hs", "source": {"path": url}}]}],
        }, tmp_path / "remote.yaml")
        modality = catalog.scenes[0].modalities[0]
        assert str(modality.source.path) == url
        with rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"):
            cube = read_source(modality)
            assert cube.shape == (4, 1024, 1024) and cube.rio.crs.to_string() == "EPSG:32632"
            before = sum(sent)
            tile = cube.isel(y=slice(256, 320), x=slice(512, 576)).values
    finally:
        server.shutdown()
        server.server_close()
    assert np.array_equal(tile, data[:, 256:320, 512:576])
    size = cog.stat().st_size
    assert sum(sent) < size / 4, f"{sum(sent)} of {size} bytes served for a 64 x 64 tile"
    assert sum(sent) - before <= 4 * 256 * 256 * 4 + 65536  # the tile's one 256 x 256 block (all bands), little more
