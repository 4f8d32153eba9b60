"""Small configs and batches for the model tests (tiny preset, random data)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from models import ModelConfig

TWO_MODALITIES = (["hs", "lidar"], [63, 2])
THREE_MODALITIES = (["hs", "sar", "dsm"], [30, 4, 1])


def tiny_config(method: str, modalities=TWO_MODALITIES, patch_size: int = 5, **params) -> ModelConfig:
    names, bands = modalities
    return ModelConfig(
        method=method, modalities=list(names), bands=list(bands), num_classes=6, patch_size=patch_size,
        backbone="tiny", params=params,
    )


def random_batch(config: ModelConfig, batch: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    p = config.patch_size
    return {name: torch.randn(batch, c, p, p, generator=g) for name, c in zip(config.modalities, config.bands)}


@pytest.fixture
def make_config() -> Callable[..., ModelConfig]:
    return tiny_config


@pytest.fixture
def make_batch() -> Callable[..., dict[str, torch.Tensor]]:
    return random_batch
