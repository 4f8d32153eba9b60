"""Shared fixtures of the pipeline tests.

``make_map_store(folder, ...)``: write a small map store (the layout of pipeline.data.store) for the
export and report tests; ``.open()`` on the result opens it lazily as the pipeline does.
``make_exported_run(folder, ...)``: the same, plus the three COGs pipeline.run exports from it.
``mapped_demo``: the small demo scene mapped once per session from local files with the trained
checkpoint (one local worker, 32-pixel tiles): ``(output folder, runs)``, the reference map.
``dask_processes(address, procs, workers)``: a context that waits for the ``workers`` of an external
``dask scheduler`` / ``dask worker`` processes and terminates them on exit.
(pytest runs with ``--import-mode=importlib``, so helpers reach tests as fixtures.)
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
from affine import Affine

CRS = "EPSG:32632"
ORIGIN = (652000.0, 5102000.0)  # upper-left corner, metres (Trento area, UTM 32N)
CLASSES = [
    {"value": 1, "name": "Apple trees", "color": "#1f9e3a"},
    {"value": 2, "name": "Buildings", "color": "#d62728"},
    {"value": 3, "name": "Ground", "color": "#c49c6b"},
    {"value": 4, "name": "Woods", "color": "#0b4f1c"},
    {"value": 5, "name": "Vineyard", "color": "#9467bd"},
    {"value": 6, "name": "Roads", "color": "#7f7f7f"},
]
MODALITIES = [{"name": "hs", "kind": "hs", "bands": 63}, {"name": "lidar", "kind": "lidar", "bands": 2}]


@dataclass
class MapStore:
    path: Path
    class_table: list[dict]
    classes: np.ndarray
    confidence: np.ndarray
    pattern: np.ndarray
    transform: Affine

    def open(self) -> xr.Dataset:
        """The store opened lazily (dask-backed), as the pipeline opens it."""
        return xr.open_zarr(self.path, consolidated=False)


def _build_map_store(folder: Path, height: int = 300, width: int = 500, resolution: float = 1.0,
                    seed: int = 0, chunk: int = 128, crs: str = CRS,
                    origin: tuple[float, float] = ORIGIN) -> MapStore:
    """Random class blocks of 25 x 25 px, a nodata corner, a MODE test pattern in the lower-right
    64 x 64 px (scenes of 128 px or more), patterns hs / lidar / hs+lidar. ``height`` and ``width`` must be even."""
    rng = np.random.default_rng(seed)
    block = 25
    coarse = rng.integers(1, 7, size=(-(-height // block), -(-width // block)), dtype=np.uint8)
    classes = np.kron(coarse, np.ones((block, block), np.uint8))[:height, :width]
    coarse_pattern = rng.choice(np.array([1, 2, 3, 3, 3], np.uint8), size=coarse.shape)
    pattern = np.kron(coarse_pattern, np.ones((block, block), np.uint8))[:height, :width]
    # Lower-right 64 x 64 px: class 5 with one class-2 pixel per 2 x 2 cell, at a position that cycles
    # over the cell, so a 2x overview is all 5 with MODE resampling, not with NEAREST.
    if min(height, width) >= 128:
        rows, cols = np.indices((64, 64))
        cell = (rows // 2 + cols // 2) % 4
        minority = (rows % 2) * 2 + (cols % 2) == cell
        classes[-64:, -64:] = np.where(minority, 2, 5)
    nodata = np.zeros((height, width), bool)
    nodata[: height // 5, : width // 4] = True  # nothing available in the upper-left corner
    classes[nodata] = 0
    pattern[nodata] = 0
    confidence = rng.uniform(0.3, 1.0, size=(height, width)).astype(np.float32)
    confidence[nodata] = np.nan

    transform = Affine(resolution, 0.0, origin[0], 0.0, -resolution, origin[1])
    x = origin[0] + resolution * (np.arange(width) + 0.5)
    y = origin[1] - resolution * (np.arange(height) + 0.5)
    ds = xr.Dataset(
        {"class": (("y", "x"), classes), "confidence": (("y", "x"), confidence), "pattern": (("y", "x"), pattern)},
        coords={"y": y, "x": x},
    )
    # rioxarray drops 'crs'/'transform' attrs when it writes spatial_ref: set the attrs afterwards.
    ds = ds.rio.write_crs(crs).rio.write_transform(transform)
    ds.attrs.update(crs=crs, transform=list(transform)[:6], classes=CLASSES, modalities=MODALITIES,
                    scene="test-scene")
    path = Path(folder) / "map.zarr"
    ds.chunk({"y": chunk, "x": chunk}).to_zarr(path, zarr_format=3, consolidated=False, mode="w")
    return MapStore(path, CLASSES, classes, confidence, pattern, transform)


@pytest.fixture(scope="session")
def make_map_store() -> Callable[..., MapStore]:
    return _build_map_store


def _build_exported_run(folder: Path, **store: object) -> MapStore:
    """A map store in ``folder`` and its COGs beside it (landcover, confidence, availability .tif)."""
    from pipeline.outputs.cog import write_class_cog, write_confidence_cog, write_pattern_cog

    built = _build_map_store(folder, **store)  # type: ignore[arg-type]
    ds = built.open()
    write_class_cog(ds, Path(folder) / "landcover.tif")
    write_confidence_cog(ds, Path(folder) / "confidence.tif")
    write_pattern_cog(ds, Path(folder) / "availability.tif")
    return built


@pytest.fixture(scope="session")
def make_exported_run() -> Callable[..., MapStore]:
    return _build_exported_run
@contextmanager
def _dask_processes(address: str, procs: list[subprocess.Popen], workers: int) -> Iterator[str]:
    """Wait until ``workers`` workers joined the scheduler at ``address``; terminate ``procs`` on exit."""
    try:
        from distributed import Client

        with Client(address, timeout="30s") as client:
            client.wait_for_workers(workers, timeout=90)
        yield address
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


@pytest.fixture(scope="session")
def dask_processes() -> Callable[..., AbstractContextManager[str]]:
    return _dask_processes


@pytest.fixture(scope="session")
def mapped_demo(trained_demo, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list]:
    from pipeline.config.catalog import parse_catalog
    from pipeline.run import run

    catalog, checkpoint = trained_demo
    out = tmp_path_factory.mktemp("mapped-demo")
    data = catalog.model_dump(mode="json")
    data["model"]["checkpoint"] = str(checkpoint)
    data["output"]["folder"] = str(out)
    runs = run(parse_catalog(data, catalog.path), workers=1, tile_size=32, progress=False)
    return out, runs
