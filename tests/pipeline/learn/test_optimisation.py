"""A stage's optimiser: where its learning rate comes from, the clip on every step, the schedule's end."""

from __future__ import annotations

import pytest
import torch

from models.base import OptimizerDefaults
from pipeline.config.catalog import Training
from pipeline.learn.optimisation import StageOptimiser


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
