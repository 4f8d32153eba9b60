"""Per-tile classification: which path runs, and the dense path's tiles stitched into the whole-scene map."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import xarray as xr

from models import ModelConfig, build_model
from pipeline.config.catalog import Catalog
from pipeline.config.errors import CheckpointError
from pipeline.data.ingest import ingest_scene
from pipeline.data.patches import Window, compute_norm_stats
from pipeline.inference.classify import LoadedClassifier, classify_window, dense_block_for, inference_path
from pipeline.inference.tiling import tile_windows


def test_inference_path_follows_the_catalog_and_the_checkpoint(caplog: pytest.LogCaptureFixture) -> None:
    assert inference_path("auto", supports_dense=True, trained_dense=True) == "dense"
    assert inference_path("auto", supports_dense=True, trained_dense=False) == "patch"  # keeps what it learnt
    assert inference_path("auto", supports_dense=False, trained_dense=False) == "patch"
    assert inference_path("patch", supports_dense=True, trained_dense=True) == "patch"
    assert not caplog.records
    assert inference_path("dense", supports_dense=True, trained_dense=False, where="ckpt") == "dense"
    assert "ckpt was trained on patches" in caplog.text and "never updated" in caplog.text
    with pytest.raises(CheckpointError, match="model.inference"):
        inference_path("dense", supports_dense=False, trained_dense=False, where="ckpt")


@pytest.fixture
def scene_and_model(demo_catalog: Catalog) -> tuple[xr.Dataset, LoadedClassifier]:
    ds = xr.open_zarr(ingest_scene(demo_catalog, demo_catalog.scenes[0]), chunks=None)
    modalities = [str(m) for m in ds["modality"].values]
    rng = np.random.default_rng(0)
    stats = compute_norm_stats(ds, modalities, rng.integers(0, ds.sizes["y"], 500), rng.integers(0, ds.sizes["x"], 500))
    torch.manual_seed(0)
    config = ModelConfig("mamol", modalities, [int(ds.sizes[f"band_{m}"]) for m in modalities], 6, patch_size=5,
                         backbone="tiny", params={"window_size": 4})
    model = build_model(config).eval()
    return ds, LoadedClassifier(model, stats, np.arange(1, 7, dtype=np.uint8), torch.device("cpu"), None)


def test_fixed_dense_blocks_give_what_one_pass_over_the_tile_gives(scene_and_model) -> None:
    # CUDA classifies a tile as fixed blocks of the scene grid (one shape per pass, see DENSE_BLOCK_CUDA):
    # stitched and cropped, they must give the tile's own pass, also for tiles off the block grid and at the
    # scene's edge, where blocks reach past the scene
    ds, loaded = scene_and_model
    assert dense_block_for(torch.device("cuda")) == 128 and dense_block_for(torch.device("cpu")) is None
    blocked = dataclasses.replace(loaded, dense_block=16)
    ny, nx = ds.sizes["y"], ds.sizes["x"]
    for window in (Window(0, 0, 40, 72), Window(5, 30, 20, 21), Window(ny - 12, nx - 30, 12, 30)):
        one_pass = classify_window(ds, loaded, window, inference="dense")
        in_blocks = classify_window(ds, blocked, window, inference="dense")
        assert one_pass.keys() == in_blocks.keys()
        for key, values in one_pass.items():
            np.testing.assert_array_equal(in_blocks[key], values, err_msg=f"{key} of {window}")


def test_dense_tiles_stitch_into_the_whole_scene_map_bit_for_bit(scene_and_model) -> None:
    ds, loaded = scene_and_model
    height, width = 40, 72  # a corner of the scene: its edge pixels see the scene border
    whole = classify_window(ds, loaded, Window(0, 0, height, width), inference="dense")
    stitched = {k: np.zeros_like(v) for k, v in whole.items()}
    for _, window in tile_windows(height, width, 20):  # tiles of 20 start off the 4-px window grid
        part = classify_window(ds, loaded, window, inference="dense")
        for k in stitched:
            stitched[k][window.slices] = part[k]
    assert np.array_equal(stitched["class"], whole["class"])
    np.testing.assert_array_equal(stitched["confidence"], whole["confidence"])
    assert np.array_equal(whole["class"] == 0, whole["pattern"] == 0)  # nodata exactly where nothing is available
    assert len(np.unique(whole["class"][whole["pattern"] > 0])) > 1
