"""Benchmark scenes from ../shared/data: real LiDAR and labels kept, HS synthesised, clouds and a LiDAR gap."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio

from pipeline.config.catalog import load_catalog
from pipeline.datasets.benchmark_scenes import LIDAR_NODATA, RECIPES, read_asd_folder
from pipeline.datasets.cli import main

ROOT = Path(__file__).resolve().parents[3]
SHARED = ROOT.parent / "shared" / "data"
needs_shared = pytest.mark.skipif(not (SHARED / "muufl" / "gt.mat").is_file(), reason="../shared/data (MUUFL pieces) is absent")


@needs_shared
def test_muufl_scene_keeps_the_real_pieces(tmp_path: Path) -> None:
    import scipy.io

    assert main(["build-benchmark", "muufl", "--dest", str(tmp_path / "bench")]) == 0
    truth = scipy.io.loadmat(SHARED / "muufl" / "gt.mat")["gt"]
    lidar_mat = scipy.io.loadmat(SHARED / "muufl" / "LiDAR.mat")["LiDAR"]
    with rasterio.open(tmp_path / "bench" / "labels.tif") as src:
        assert np.array_equal(src.read(1), truth)
    with rasterio.open(tmp_path / "bench" / "lidar.tif") as src:
        lidar = src.read()
        assert src.nodata == LIDAR_NODATA and src.crs.to_epsg() == 32616
    gap = lidar[0] == LIDAR_NODATA
    assert 0.05 < gap.mean() < 0.2
    assert np.array_equal(lidar[0][~gap], lidar_mat[..., 0][~gap])
    with rasterio.open(tmp_path / "bench" / "hs.tif") as src:
        assert src.count == 64 and float(src.tags(1)["wavelength"]) == 375.0
        hs = src.read()
    assert np.isfinite(hs).all() and hs.min() >= 0
    # Real spectra tell grass (1) from road (5): NIR over red is high on grass, flat on asphalt.
    red, nir = np.argmin(np.abs(RECIPES["muufl"].wavelengths - 660)), np.argmin(np.abs(RECIPES["muufl"].wavelengths - 850))
    ratio = hs[nir] / np.maximum(hs[red], 1e-3)
    assert np.median(ratio[truth == 2]) > 2 * np.median(ratio[truth == 5])
    catalog = load_catalog(ROOT / "catalogs" / "muufl-bench.yaml")
    assert [c.value for c in catalog.scene().labels.classes] == list(range(1, 12))


@needs_shared
def test_field_spectra_are_read_per_measurement() -> None:
    wavelengths = RECIPES["muufl"].wavelengths
    asphalt = read_asd_folder(SHARED / "muufl" / "field_spectra" / "ASD_Spectra" / "Asphalt", wavelengths)
    assert asphalt.shape[1] == 64 and asphalt.shape[0] >= 10  # ten measurements per file
    assert 0.02 < float(np.median(asphalt)) < 0.3
