"""Training, validation and test pixels: drawn with a seed, never overlapping."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from pipeline.config.catalog import Catalog, Training
from pipeline.config.errors import InputError
from pipeline.data.ingest import ingest_scene
from pipeline.learn.sampling import Split, make_split, spatially_balanced


@pytest.fixture
def store(demo_catalog: Catalog) -> xr.Dataset:
    return xr.open_zarr(ingest_scene(demo_catalog, demo_catalog.scenes[0]))


@pytest.mark.parametrize("sampling", ["random", "spatial"])
def test_split_counts_disjointness_and_seed(store: xr.Dataset, demo_catalog: Catalog, tmp_path, sampling: str) -> None:
    labels_cfg = demo_catalog.scenes[0].labels
    training = Training(samples_per_class=20, validation_fraction=0.25, sampling=sampling)
    split = make_split(store, labels_cfg, training, seed=3)
    labels = store["labels"].values
    counts = np.bincount(split.train_targets, minlength=6) + np.bincount(split.val_targets, minlength=6)
    available_per_class = np.bincount(labels[labels > 0] - 1, minlength=6)
    assert np.array_equal(counts, np.minimum(20, available_per_class))
    train = set(zip(split.train_rows.tolist(), split.train_cols.tolist()))
    val = set(zip(split.val_rows.tolist(), split.val_cols.tolist()))
    test = set(zip(split.test_rows.tolist(), split.test_cols.tolist()))
    assert not (train & val) and not (train & test) and not (val & test)
    assert len(train) + len(val) + len(test) == int((labels > 0).sum())
    # Targets are class indices of the labels at those pixels.
    assert np.array_equal(labels[split.test_rows, split.test_cols] - 1, split.test_targets)
    again = make_split(store, labels_cfg, training, seed=3)
    assert np.array_equal(again.train_rows, split.train_rows) and np.array_equal(again.val_cols, split.val_cols)
    other = make_split(store, labels_cfg, training, seed=4)
    assert not np.array_equal(other.train_rows, split.train_rows)
    loaded = Split.load(split.save(tmp_path / "split.npz"))
    assert np.array_equal(loaded.test_cols, split.test_cols)


def test_drawn_pixels_validate_only_when_the_weights_are_selected_on_them(store: xr.Dataset, demo_catalog: Catalog) -> None:
    labels_cfg = demo_catalog.scenes[0].labels
    classes = np.bincount(store["labels"].values.ravel(), minlength=7)[1:] > 0  # the classes the demo has pixels of
    assert classes.sum() >= 4
    for selection, held_out in (("last", 0), ("average", 0), ("best", 4)):  # 0.2 of 20 a class
        split = make_split(store, labels_cfg, Training(samples_per_class=20, selection=selection), seed=1)
        assert np.bincount(split.val_targets, minlength=6)[classes].tolist() == [held_out] * classes.sum(), selection
        assert np.bincount(split.train_targets, minlength=6)[classes].tolist() == [20 - held_out] * classes.sum(), selection
    # a fraction the catalog gives is kept, whatever the selection
    split = make_split(store, labels_cfg, Training(samples_per_class=20, validation_fraction=0.1), seed=1)
    assert np.bincount(split.val_targets, minlength=6)[classes].tolist() == [2] * classes.sum()


def test_per_class_counts_by_name_and_unknown_names(store: xr.Dataset, demo_catalog: Catalog) -> None:
    labels_cfg = demo_catalog.scenes[0].labels
    split = make_split(store, labels_cfg, Training(samples_per_class={"Vineyard": 5, "Roads": 3}, validation_fraction=0), seed=0)
    per_class = np.bincount(split.train_targets, minlength=6)
    assert per_class[4] == 5 and per_class[5] == 3
    with pytest.raises(InputError, match="samples_per_class"):
        make_split(store, labels_cfg, Training(samples_per_class={"Wodos": 5}), seed=0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_spatially_balanced_draw_takes_one_pixel_from_every_block_of_the_class(seed: int) -> None:
    # A class filling a 64 x 64 square: in Z-order, 16 equal strata are its 16 blocks of 16 x 16 pixels.
    rows, cols = (a.ravel() for a in np.mgrid[0:64, 0:64])
    drawn = spatially_balanced(rows, cols, 16, np.random.default_rng(seed))
    blocks = np.bincount((rows[drawn] // 16) * 4 + cols[drawn] // 16, minlength=16)
    assert blocks.tolist() == [1] * 16
    uniform = np.random.default_rng(seed).permutation(rows.size)[:16]  # what sampling: random draws
    assert np.bincount((rows[uniform] // 16) * 4 + cols[uniform] // 16, minlength=16).max() > 1


def test_a_spatially_balanced_draw_keeps_every_pixel_when_asked_for_more() -> None:
    rows, cols = np.array([5, 1, 3]), np.array([0, 2, 4])
    assert sorted(spatially_balanced(rows, cols, 10, np.random.default_rng(0)).tolist()) == [0, 1, 2]


def test_spatial_sampling_spreads_the_demo_classes_training_pixels(store: xr.Dataset, demo_catalog: Catalog) -> None:
    """Over a class's extent (its pixels in 8 x 8 blocks), a spatial draw leaves fewer blocks twice-sampled than a uniform one."""
    labels_cfg = demo_catalog.scenes[0].labels
    repeats = {}
    for sampling in ("random", "spatial"):
        total = 0
        for seed in range(3):
            split = make_split(store, labels_cfg, Training(samples_per_class=40, validation_fraction=0, sampling=sampling), seed)
            for k in range(6):
                at = split.train_targets == k
                blocks = np.unique(np.stack([split.train_rows[at] // 8, split.train_cols[at] // 8]), axis=1).shape[1]
                total += int(at.sum()) - blocks  # pixels that share a block with another drawn pixel
        repeats[sampling] = total
    assert repeats["spatial"] < repeats["random"]
