"""The procedural demo scene: files, class layout, physical plausibility, determinism, and its catalog."""

from __future__ import annotations

import shutil
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import xarray as xr
from rasterio import features

import pipeline.datasets.demo as demo
from pipeline.cli import open_catalog
from pipeline.config.catalog import load_catalog
from pipeline.data.ingest import ingest_catalog

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return demo.generate_demo_scene(tmp_path_factory.mktemp("demo"), seed=0)


def read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


def test_files_and_georeference(scene: dict[str, Path]) -> None:
    assert set(scene) == set(demo.FILES) and all(p.is_file() for p in scene.values())
    with rasterio.open(scene["hs"]) as hs:
        assert (hs.count, hs.height, hs.width) == (63, 166, 600) and hs.dtypes[0] == "float32"
        assert hs.crs.to_epsg() == 32632 and hs.transform.a == 1.0 and (hs.transform.c, hs.transform.f) == demo.ORIGIN
        wavelengths = [float(hs.tags(b)["wavelength"]) for b in range(1, 64)]
        assert wavelengths[0] == 402.0 and wavelengths[-1] == 989.0
    with rasterio.open(scene["lidar"]) as lidar:
        assert lidar.count == 2 and lidar.nodata == demo.LIDAR_NODATA
    with rasterio.open(scene["labels"]) as labels:
        assert labels.dtypes[0] == "uint8" and labels.colormap(1)[1][:3] == (214, 39, 40)


def test_labels_like_trento(scene: dict[str, Path]) -> None:
    labels = read(scene["labels"])[0]
    counts = np.bincount(labels.ravel(), minlength=7)
    assert 0.2 < (labels > 0).mean() < 0.4  # Trento: 30%
    assert (counts[1:] > 300).all(), counts  # every class has training material
    # Labels are blobs inside parcels: most labelled pixels have a fully labelled 3 x 3 neighbourhood.
    same = np.ones_like(labels, bool)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            same &= np.roll(np.roll(labels, dy, 0), dx, 1) == labels
    assert same[labels > 0].mean() > 0.7


def test_heights_and_spectra_by_class(scene: dict[str, Path]) -> None:
    labels = read(scene["labels"])[0]
    lidar = read(scene["lidar"])
    hs = read(scene["hs"])
    valid = lidar[0] != demo.LIDAR_NODATA
    clouds = gpd.read_file(scene["clouds"]).to_crs(demo.CRS)
    with rasterio.open(scene["hs"]) as src:
        clear = features.rasterize(clouds.geometry, out_shape=src.shape, transform=src.transform) == 0

    def height(c: int, q: float) -> float:
        return float(np.quantile(lidar[0][(labels == c) & valid], q))

    assert height(demo.WOODS, 0.75) > 10 and height(demo.WOODS, 0.75) < 21
    assert 2.5 < height(demo.APPLE, 0.9) < 7
    assert height(demo.VINEYARD, 0.9) < 3
    assert 4 <= height(demo.BUILDINGS, 0.5) <= 15
    assert height(demo.ROADS, 0.9) < 0.5 and height(demo.GROUND, 0.9) < 0.5

    def ndvi(c: int) -> float:
        red, nir = hs[np.argmin(abs(demo.WAVELENGTHS - 660))], hs[np.argmin(abs(demo.WAVELENGTHS - 850))]
        mask = (labels == c) & clear
        return float(np.median((nir[mask] - red[mask]) / (nir[mask] + red[mask])))

    for vegetation in (demo.APPLE, demo.WOODS, demo.VINEYARD):
        assert ndvi(vegetation) > 0.4
    for bare in (demo.ROADS, demo.BUILDINGS):
        assert ndvi(bare) < 0.3
    # Clouds: bright and flat in the optical data.
    assert np.median(hs[:, ~clear].mean(axis=0)) > 0.5 > np.median(hs[:, clear].mean(axis=0))


def test_clouds_and_lidar_gap(scene: dict[str, Path]) -> None:
    clouds = gpd.read_file(scene["clouds"])
    gap = gpd.read_file(scene["lidar_gap"])
    assert clouds.crs.to_epsg() == 4326 and gap.crs.to_epsg() == 4326
    with rasterio.open(scene["hs"]) as src:
        shape, transform = src.shape, src.transform
    cloud = features.rasterize(clouds.to_crs(demo.CRS).geometry, out_shape=shape, transform=transform) > 0
    strip = features.rasterize(gap.to_crs(demo.CRS).geometry, out_shape=shape, transform=transform) > 0
    assert 0.10 <= cloud.mean() <= 0.15
    assert 0.08 <= strip.mean() <= 0.12
    lidar = read(scene["lidar"])
    assert (lidar[:, strip] == demo.LIDAR_NODATA).all()  # never flown: nodata in the delivered raster
    assert (lidar[0, ~strip] == demo.LIDAR_NODATA).mean() < 0.01


def test_seeded_and_independent_of_the_window(tmp_path: Path, scene: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    again = demo.generate_demo_scene(tmp_path / "again", seed=0)
    for role in ("hs", "lidar", "labels"):
        np.testing.assert_array_equal(read(again[role]), read(scene[role]))
    other = demo.generate_demo_scene(tmp_path / "other", seed=1)
    assert not np.array_equal(read(other["labels"]), read(scene["labels"]))
    # The layout is rendered parcel by parcel: smaller windows give the same scene structure.
    monkeypatch.setattr(demo, "WINDOW_ROWS", 32)
    windowed = demo.generate_demo_scene(tmp_path / "windowed", seed=0)
    np.testing.assert_array_equal(read(windowed["labels"]), read(scene["labels"]))
    lidar_a, lidar_b = read(windowed["lidar"]), read(scene["lidar"])
    # The strip never flown is the same; only the random roof dropouts move.
    assert ((lidar_a == demo.LIDAR_NODATA) != (lidar_b == demo.LIDAR_NODATA)).mean() < 0.001
    both = (lidar_a[0] != demo.LIDAR_NODATA) & (lidar_b[0] != demo.LIDAR_NODATA)
    assert np.abs(lidar_a[0] - lidar_b[0])[both].mean() < 0.2  # only the noise differs


def test_bigger_scene(tmp_path: Path) -> None:
    files = demo.generate_demo_scene(tmp_path, seed=3, height=300, width=700)
    with rasterio.open(files["hs"]) as hs:
        assert hs.shape == (300, 700)
    labels = read(files["labels"])[0]
    assert set(np.unique(labels)) == {0, 1, 2, 3, 4, 5, 6}


def test_demo_catalog_generates_and_ingests(tmp_path: Path) -> None:
    """The shipped demo.yaml on a fresh checkout: the entry points' catalog opening generates the data, then ingest."""
    (tmp_path / "catalogs").mkdir()
    catalog_file = tmp_path / "catalogs" / "demo.yaml"
    shutil.copy(ROOT / "catalogs" / "demo.yaml", catalog_file)
    assert load_catalog(catalog_file).scenes[0].generate == "demo"
    assert not (tmp_path / "data").exists()
    catalog = open_catalog(catalog_file)
    [path] = ingest_catalog(catalog)
    assert (tmp_path / "data" / "demo" / "hs.tif").is_file()
    assert path == tmp_path / "outputs" / "demo" / "demo" / "scene.zarr"
    ds = xr.open_zarr(path)
    assert ds.attrs["crs"] == "EPSG:32632" and ds.rio.crs.to_epsg() == 32632
    assert ds.attrs["transform"] == [1.0, 0.0, demo.ORIGIN[0], 0.0, -1.0, demo.ORIGIN[1]]
    assert {"hs", "lidar", "labels", "available"} <= set(ds.data_vars)
    assert ds["hs"].shape == (63, 166, 600) and ds["lidar"].shape == (2, 166, 600)
    np.testing.assert_allclose(ds["wavelength_hs"].values, demo.WAVELENGTHS)
    missing = 1 - ds["available"].mean(("y", "x")).values
    assert 0.10 <= missing[0] <= 0.16  # HS: the cloud
    assert 0.09 <= missing[1] <= 0.13  # LiDAR: the strip never flown and a few dropouts
    assert np.isnan(ds["lidar"].values[:, ~ds["available"].sel(modality="lidar").values]).all()
    assert ds["labels"].dtype == np.uint8 and [c["value"] for c in ds.attrs["classes"]] == [1, 2, 3, 4, 5, 6]
