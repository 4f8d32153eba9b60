"""Training, validation and test pixels: drawn with a seed, never overlapping."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from pipeline.config.catalog import Catalog, Training
from pipeline.config.errors import InputError
from pipeline.data.ingest import ingest_scene
from pipeline.learn.sampling import Split, make_split


@pytest.fixture
def store(demo_catalog: Catalog) -> xr.Dataset:
    return xr.open_zarr(ingest_scene(demo_catalog, demo_catalog.scenes[0]))


def test_split_counts_disjointness_and_seed(store: xr.Dataset, demo_catalog: Catalog, tmp_path) -> None:
    labels_cfg = demo_catalog.scenes[0].labels
    training = Training(samples_per_class=20, validation_fraction=0.25)
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


def test_per_class_counts_by_name_and_unknown_names(store: xr.Dataset, demo_catalog: Catalog) -> None:
    labels_cfg = demo_catalog.scenes[0].labels
    split = make_split(store, labels_cfg, Training(samples_per_class={"Vineyard": 5, "Roads": 3}, validation_fraction=0), seed=0)
    per_class = np.bincount(split.train_targets, minlength=6)
    assert per_class[4] == 5 and per_class[5] == 3
    with pytest.raises(InputError, match="samples_per_class"):
        make_split(store, labels_cfg, Training(samples_per_class={"Wodos": 5}), seed=0)
