"""Patches read window by window from a real scene store."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from pipeline.config.catalog import Catalog
from pipeline.data.ingest import ingest_scene
from pipeline.data.patches import (
    NormStats,
    Window,
    compute_norm_stats,
    gather_patches,
    pixel_windows,
    read_window,
)


@pytest.fixture
def scene_store(demo_catalog: Catalog) -> xr.Dataset:
    return xr.open_zarr(ingest_scene(demo_catalog, demo_catalog.scenes[0]))


def _unit_stats(ds: xr.Dataset, modalities: list[str]) -> NormStats:
    bands = {m: ds.sizes[f"band_{m}"] for m in modalities}
    return NormStats({m: np.zeros(b, np.float32) for m, b in bands.items()}, {m: np.ones(b, np.float32) for m, b in bands.items()})


def test_patches_are_the_pixels_neighbourhood_with_unavailable_values_zeroed(scene_store: xr.Dataset) -> None:
    ds = scene_store
    mods = ["hs", "lidar"]
    stats = _unit_stats(ds, mods)
    rng = np.random.default_rng(1)
    rows = np.concatenate([[0, ds.sizes["y"] - 1, 5], rng.integers(0, ds.sizes["y"], 40)])
    cols = np.concatenate([[0, ds.sizes["x"] - 1, 70], rng.integers(0, ds.sizes["x"], 40)])
    patches, centre = gather_patches(ds, mods, rows, cols, patch_size=5, stats=stats, tile_size=32)
    avail = ds["available"].values
    for m_i, m in enumerate(mods):
        cube = ds[m].values
        padded = np.pad(cube, ((0, 0), (2, 2), (2, 2)), constant_values=np.nan)
        pad_av = np.pad(avail[m_i], 2, constant_values=False)
        for k, (r, c) in enumerate(zip(rows, cols)):
            window = padded[:, r : r + 5, c : c + 5]
            ok = pad_av[r : r + 5, c : c + 5] & np.isfinite(window)
            expected = np.where(ok, window, 0.0)
            np.testing.assert_allclose(patches[m][k], expected, rtol=1e-6)
            assert centre[k, m_i] == avail[m_i, r, c]
    # The corner pixel's patch reaches outside the scene: those positions are zero.
    assert np.all(patches["lidar"][0][:, :2, :] == 0)


def test_pixel_windows_cover_every_pixel_once() -> None:
    rng = np.random.default_rng(0)
    rows, cols = rng.integers(0, 100, 500), rng.integers(0, 130, 500)
    seen = []
    for window, idx in pixel_windows(rows, cols, (100, 130), 32):
        assert np.all((rows[idx] >= window.row) & (rows[idx] < window.row + window.height))
        assert np.all((cols[idx] >= window.col) & (cols[idx] < window.col + window.width))
        seen.append(idx)
    assert sorted(np.concatenate(seen).tolist()) == list(range(500))


def test_read_window_pads_outside_the_scene(scene_store: xr.Dataset) -> None:
    data = read_window(scene_store, ["hs"], Window(0, 0, 8, 8), halo=3)
    assert data.values["hs"].shape[1:] == (14, 14)
    assert np.isnan(data.values["hs"][:, :3, :]).all()
    assert not data.available[:, :3, :].any()


def test_norm_stats_use_only_available_pixels(scene_store: xr.Dataset) -> None:
    ds = scene_store
    rows, cols = np.nonzero(ds["labels"].values > 0)
    stats = compute_norm_stats(ds, ["hs", "lidar"], rows, cols)
    lidar = ds["lidar"].values[:, rows, cols]
    ok = ds["available"].sel(modality="lidar").values[rows, cols]
    np.testing.assert_allclose(stats.mean["lidar"], lidar[:, ok].mean(axis=1), rtol=1e-4)
    assert np.all(stats.std["hs"] > 0)
    assert NormStats.from_dict(stats.to_dict()).mean["hs"].tolist() == stats.mean["hs"].tolist()
