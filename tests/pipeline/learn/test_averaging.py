"""Tail averaging (``training.selection: average``): a stage keeps the mean of its weights over the schedule's last steps."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from models import ModelConfig, build_model
from pipeline.config.catalog import Catalog, DenseCrops, Protocol, Training
from pipeline.learn.averaging import TailAverage
from pipeline.learn.dense_training import fit_dense
from pipeline.learn.training import fit, model_config_for, prepare_training_data


@contextmanager
def weights_after_every_step(model: torch.nn.Module) -> Iterator[list[dict[str, torch.Tensor]]]:
    """The model's parameters after each optimiser step taken inside the block (torch's global step hook)."""
    snapshots: list[dict[str, torch.Tensor]] = []

    def record(optimizer, args, kwargs) -> None:
        snapshots.append({k: v.detach().clone() for k, v in model.named_parameters()})

    handle = register_optimizer_step_post_hook(record)
    try:
        yield snapshots
    finally:
        handle.remove()


def _assert_mean_of_the_tail(model: torch.nn.Module, snapshots: list[dict[str, torch.Tensor]], tail: int) -> None:
    final = dict(model.named_parameters())
    trained = [k for k, p in final.items() if p.requires_grad]
    for name in trained:
        expected = torch.stack([s[name] for s in snapshots[-tail:]]).mean(0)
        torch.testing.assert_close(final[name].detach(), expected, rtol=1e-5, atol=1e-6)
    assert any(not torch.equal(final[k].detach(), snapshots[-1][k]) for k in trained)  # not the last step's weights


def test_tail_average_rejects_an_empty_tail_and_leaves_weights_alone_before_it() -> None:
    weights = [torch.nn.Parameter(torch.zeros(2))]
    with pytest.raises(ValueError, match="fraction"):
        TailAverage(weights, 10, 0.0)
    average = TailAverage(weights, 10, 0.2)
    average.update(8)  # step 8 of 10: before the tail of 2
    assert average.apply() == 0 and torch.equal(weights[0].detach(), torch.zeros(2))


def test_patch_training_keeps_the_mean_of_the_last_steps() -> None:
    rng = np.random.default_rng(0)
    targets = np.arange(96) % 3
    patches = {"hs": (rng.normal(size=(96, 4, 3, 3)) + targets[:, None, None, None]).astype(np.float32),
               "lidar": rng.normal(size=(96, 2, 3, 3)).astype(np.float32)}
    avail = np.ones((96, 2), dtype=bool)
    torch.manual_seed(0)
    model = build_model(ModelConfig(method="baseline", modalities=["hs", "lidar"], bands=[4, 2], num_classes=3, patch_size=3))
    training = Training(epochs=2, batch_size=32, selection="average", average_fraction=0.5)  # 6 steps, the last 3 averaged
    with weights_after_every_step(model) as snapshots:
        fit(model, patches, avail, targets, patches, avail, targets, training, 0, progress=False, device="cpu")
    assert len(snapshots) == 6
    _assert_mean_of_the_tail(model, snapshots, 3)


def test_dense_training_keeps_the_mean_of_the_last_steps(demo_catalog: Catalog) -> None:
    data = prepare_training_data(demo_catalog, demo_catalog.scenes[0], 0)
    torch.manual_seed(0)
    model = build_model(model_config_for(demo_catalog, demo_catalog.scenes[0], data.ds))
    training = Training(epochs=1, max_steps=4, selection="average", average_fraction=0.5)
    settings = DenseCrops(crop_size=16, context=8, crops_per_batch=4, val_tile=256)
    with weights_after_every_step(model) as snapshots:
        fit_dense(model, data.ds, data.stats, data.split, training, Protocol(kind="eta", eta=0.5), 0, progress=False,
                  precision="float32", settings=settings)
    assert len(snapshots) == 4
    _assert_mean_of_the_tail(model, snapshots, 2)
