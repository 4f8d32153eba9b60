"""The random-forest floor: availability-blind, on exactly the training pixels."""

from __future__ import annotations

import numpy as np

from pipeline.config.catalog import Catalog
from pipeline.learn.forest import centre_pixels, fit_forest, forest_predict
from pipeline.learn.training import prepare_training_data


def test_features_are_the_centre_pixel_with_missing_modalities_at_zero() -> None:
    hs = np.arange(2 * 3 * 3 * 3, dtype=np.float32).reshape(2, 3, 3, 3)
    lidar = -np.ones((2, 1, 3, 3), dtype=np.float32)
    available = np.array([[True, True], [True, False]])
    features = centre_pixels({"hs": hs, "lidar": lidar}, available, ["hs", "lidar"])
    assert features.shape == (2, 4)
    assert np.array_equal(features[0], [hs[0, 0, 1, 1], hs[0, 1, 1, 1], hs[0, 2, 1, 1], -1.0])
    assert features[1, 3] == 0.0  # missing LiDAR looks like the mean, with no flag: availability-blind


def test_forest_learns_from_exactly_the_training_pixels(demo_catalog: Catalog) -> None:
    data = prepare_training_data(demo_catalog, demo_catalog.scene(), seed=0)
    targets = data.split.train_targets
    forest = fit_forest(data.train_patches, data.train_real, targets, data.modalities, seed=0, trees=5)
    # A bootstrap tree weighs every drawn sample: the root's weight is the number of training pixels.
    assert all(tree.tree_.weighted_n_node_samples[0] == len(targets) for tree in forest.estimators_)
    assert forest.n_features_in_ == sum(v.shape[1] for v in data.train_patches.values())
    assert sorted(forest.classes_) == sorted(np.unique(targets))
    predicted = forest_predict(forest, data.val_patches, data.val_real, data.modalities)
    assert (predicted == data.split.val_targets).mean() > 0.5  # the demo's classes are separable per pixel
