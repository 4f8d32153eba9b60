"""Alignment onto the scene grid: dask-backed rasters are warped chunk by chunk and match the in-memory path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling

from pipeline.config.catalog import Source
from pipeline.data.grid import SceneGrid, align
from pipeline.data.sources import read_source


def _write(path: Path, data: np.ndarray, transform: Affine, crs: str) -> Path:
    with rasterio.open(path, "w", driver="GTiff", height=data.shape[1], width=data.shape[2], count=data.shape[0],
                       dtype=data.dtype, crs=crs, transform=transform, tiled=True, blockxsize=64, blockysize=64) as dst:
        dst.write(data)
    return path


def test_lazy_alignment_matches_the_in_memory_one(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:300, 0:400]
    data = np.stack([np.sin(xx / 17.0) + np.cos(yy / 23.0), xx / 400.0 + rng.normal(0, 0.01, xx.shape)]).astype("float32")
    data[0, 100:110, 200:230] = np.nan  # a hole: NaN must not bleed into bilinear neighbours differently
    path = _write(tmp_path / "dsm.tif", data, Affine(2.0, 0, 664_000.0, 0, -2.0, 5_104_000.0), "EPSG:32632")
    # A finer grid, shifted by a fraction of a pixel, that extends past the source's east edge.
    grid = SceneGrid(CRS.from_epsg(32632), Affine(1.0, 0, 664_101.3, 0, -1.0, 5_103_950.7), 700, 760)

    lazy_source = read_source(Source(path=path))
    assert lazy_source.chunks is not None
    lazy = align(lazy_source, grid)
    assert lazy.chunks is not None  # nothing computed yet
    eager = align(lazy_source.load(), grid)
    assert lazy.shape == eager.shape == (2, 700, 760)
    assert lazy.rio.crs == grid.crs and lazy.rio.transform() == grid.transform
    a, b = lazy.values, eager.values
    # Chunk by chunk gives what the whole raster gives.
    np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
    np.testing.assert_allclose(a[~np.isnan(a)], b[~np.isnan(b)], rtol=1e-5, atol=1e-6)
    assert np.isnan(a[:, :, -50:]).all()  # beyond the source's east edge
    assert np.isfinite(a[1, :300, :300]).all()
    # And both agree with rioxarray's warp of the same raster; they may differ only on the rim of the NaN hole.
    source = lazy_source.load().rio.write_nodata(np.nan, encoded=False)
    reference = source.rio.reproject(grid.crs, shape=grid.shape, transform=grid.transform,
                                     resampling=Resampling.bilinear, nodata=np.nan).values
    both = np.isfinite(a) & np.isfinite(reference)
    np.testing.assert_allclose(a[both], reference[both], rtol=1e-5, atol=1e-6)
    assert (np.isnan(a) != np.isnan(reference)).sum() < 0.002 * a.size
