"""A stage's optimiser: where its learning rate and batch come from (MaMOL's dense rate, the baseline's probe rate and batch), the clip on every step, the schedule's end."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from models import build_model
from models.base import ModelConfig, OptimizerDefaults
from models.baseline import Baseline
from models.mamol import MaMOL
from pipeline.config.catalog import Catalog, DenseCrops, Protocol, Training
from pipeline.learn.dense_training import fit_dense
from pipeline.learn.optimisation import StageOptimiser
from pipeline.learn.training import TrainingData, fit, model_config_for, prepare_training_data


def _weights() -> list[torch.nn.Parameter]:
    torch.manual_seed(0)
    return [torch.nn.Parameter(torch.randn(8, 4)), torch.nn.Parameter(torch.randn(4))]


def _grad_norm(params: list[torch.nn.Parameter]) -> float:
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params])))


@pytest.mark.parametrize(("catalog_lr", "catalog_wd", "expected"), [(None, None, (3e-3, 0.5)), (1e-4, 0.0, (1e-4, 0.0))])
def test_the_catalogs_rate_and_decay_win_over_the_methods_defaults(catalog_lr, catalog_wd, expected) -> None:
    training = Training(lr=catalog_lr, weight_decay=catalog_wd)
    stage = StageOptimiser(_weights(), 10, training, OptimizerDefaults(lr=3e-3, weight_decay=0.5))
    group = stage.optimiser.param_groups[0]
    assert (group["initial_lr"], group["weight_decay"]) == expected


@pytest.mark.parametrize("clip", [0.5, None])
def test_every_step_clips_the_gradient_norm_to_training_grad_clip(clip) -> None:
    params = _weights()
    stage = StageOptimiser(params, 10, Training(grad_clip=clip), OptimizerDefaults())
    stage.step(1000.0 * sum((p**2).sum() for p in params))  # a gradient norm in the thousands
    norm = _grad_norm(params)
    if clip is None:
        assert norm > 100.0
    else:
        assert norm == pytest.approx(clip, rel=1e-4)


def test_the_schedule_ends_at_zero_after_its_steps() -> None:
    params = _weights()
    stage = StageOptimiser(params, 5, Training(warmup_fraction=0.2), OptimizerDefaults(lr=1e-2))
    rates = []
    while not stage.done:
        rates.append(stage.lr)
        stage.step(sum(p.sum() for p in params))
    assert stage.steps == 5
    assert rates[0] == pytest.approx(1e-2)  # one warm-up step, then linear decay
    assert rates == sorted(rates, reverse=True) and rates[-1] > 0
    assert stage.lr == 0.0


def test_the_dense_path_takes_dense_lr_where_a_method_sets_it() -> None:
    assert OptimizerDefaults(lr=2e-3, dense_lr=1e-3).for_training(dense=True, frozen=False).lr == 1e-3
    assert OptimizerDefaults(lr=2e-3, dense_lr=1e-3).for_training(dense=False, frozen=False).lr == 2e-3
    assert OptimizerDefaults(lr=2e-3).for_training(dense=True, frozen=False).lr == 2e-3


def test_a_frozen_backbone_takes_frozen_lr_on_either_path_where_a_method_sets_it() -> None:
    defaults = OptimizerDefaults(lr=1e-3, dense_lr=5e-4, frozen_lr=2e-3, weight_decay=0.1)
    assert defaults.for_training(dense=False, frozen=True) == OptimizerDefaults(lr=2e-3, dense_lr=5e-4, frozen_lr=2e-3,
                                                                                weight_decay=0.1)
    assert defaults.for_training(dense=True, frozen=True).lr == 2e-3
    assert defaults.for_training(dense=False, frozen=False).lr == 1e-3
    assert OptimizerDefaults(lr=1e-3, dense_lr=5e-4).for_training(dense=True, frozen=True).lr == 5e-4


def test_a_frozen_backbone_takes_frozen_batch_size_where_a_method_sets_it() -> None:
    defaults = OptimizerDefaults(batch_size=64, frozen_batch_size=32, dense_lr=5e-4)
    assert defaults.for_training(dense=False, frozen=True).batch_size == 32
    assert defaults.for_training(dense=False, frozen=False).batch_size == 64
    assert defaults.for_training(dense=True, frozen=True).lr == 5e-4  # no frozen_lr: the path's rate, the batch alone changes
    assert defaults.for_training(dense=False, frozen=True).lr == defaults.lr
    assert OptimizerDefaults(batch_size=64).for_training(dense=False, frozen=True).batch_size == 64


def _peak_rates(train) -> set[float]:
    """The peak learning rate (``initial_lr``) of every optimiser step taken by ``train()``."""
    rates: set[float] = set()

    def record(optimizer, args, kwargs) -> None:
        rates.update(group["initial_lr"] for group in optimizer.param_groups)

    handle = register_optimizer_step_pre_hook(record)
    try:
        train()
    finally:
        handle.remove()
    return rates


def _peak_rates_on_both_paths(config: ModelConfig, data: TrainingData, training: Training) -> tuple[set[float], set[float]]:
    """The peak learning rates of one model of ``config`` trained densely and of another trained on patches."""
    dense = _peak_rates(lambda: fit_dense(build_model(config), data.ds, data.stats, data.split, training,
                                          Protocol(kind="none"), 0, progress=False, precision="float32",
                                          settings=DenseCrops(crop_size=16, crops_per_batch=2, val_tile=256)))
    patch = _peak_rates(lambda: fit(build_model(config), data.train_patches, data.train_real, data.split.train_targets,
                                    data.val_patches, data.val_real, data.split.val_targets, training, 0,
                                    progress=False, device="cpu"))
    return dense, patch


@pytest.mark.parametrize("catalog_lr", [None, 5e-4])
def test_mamol_trains_at_its_dense_rate_densely_and_at_lr_on_patches(demo_catalog: Catalog, catalog_lr) -> None:
    data = prepare_training_data(demo_catalog, demo_catalog.scenes[0], 0)
    config = model_config_for(demo_catalog, demo_catalog.scenes[0], data.ds)
    assert config.method == "mamol"
    training = Training(epochs=1, max_steps=1, lr=catalog_lr)
    defaults = MaMOL.optimizer_defaults
    assert defaults.dense_lr is not None and defaults.dense_lr != defaults.lr
    dense, patch = _peak_rates_on_both_paths(config, data, training)
    assert dense == {catalog_lr or defaults.dense_lr}
    assert patch == {catalog_lr or defaults.lr}


@pytest.mark.parametrize("catalog_lr", [None, 5e-4])
@pytest.mark.parametrize("frozen", [False, True])
def test_the_baseline_trains_whole_at_lr_and_probes_a_frozen_backbone_at_frozen_lr(demo_catalog: Catalog, frozen: bool,
                                                                                   catalog_lr) -> None:
    data = prepare_training_data(demo_catalog, demo_catalog.scenes[0], 0)
    config = dataclasses.replace(model_config_for(demo_catalog, demo_catalog.scenes[0], data.ds), method="baseline",
                                 params={"freeze_backbone": frozen})
    defaults = Baseline.optimizer_defaults
    assert defaults.frozen_lr is not None and defaults.frozen_lr != defaults.lr
    training = Training(epochs=1, max_steps=1, lr=catalog_lr)
    assert build_model(config).backbone_frozen is frozen
    dense, patch = _peak_rates_on_both_paths(config, data, training)
    expected = catalog_lr or (defaults.frozen_lr if frozen else defaults.lr)
    assert dense == {expected} and patch == {expected}


@pytest.mark.parametrize(("frozen", "catalog_batch"), [(False, None), (True, None), (True, 48)])
def test_the_baseline_probes_a_frozen_backbone_in_batches_of_frozen_batch_size(demo_catalog: Catalog, frozen: bool,
                                                                               catalog_batch: int | None) -> None:
    data = prepare_training_data(demo_catalog, demo_catalog.scenes[0], 0)
    config = dataclasses.replace(model_config_for(demo_catalog, demo_catalog.scenes[0], data.ds), method="baseline",
                                 params={"freeze_backbone": frozen})
    defaults = Baseline.optimizer_defaults
    assert defaults.frozen_batch_size is not None and defaults.frozen_batch_size != defaults.batch_size
    steps = 0

    def count(optimizer, args, kwargs) -> None:
        nonlocal steps
        steps += 1

    handle = register_optimizer_step_pre_hook(count)
    try:
        fit(build_model(config), data.train_patches, data.train_real, data.split.train_targets, data.val_patches,
            data.val_real, data.split.val_targets, Training(epochs=1, batch_size=catalog_batch), 0, progress=False,
            device="cpu")
    finally:
        handle.remove()
    batch = catalog_batch or (defaults.frozen_batch_size if frozen else defaults.batch_size)
    n = len(data.split.train_targets)
    assert n > 64 and steps == -(-n // batch)  # one epoch: a step per batch, the catalog's batch where it sets one
