"""Token projection: one token per pixel per modality, missing modalities replaced."""

from __future__ import annotations

import pytest
import torch

from models.projection import ModalityProjection


def _inputs(batch=3, p=3):
    g = torch.Generator().manual_seed(0)
    return {"hs": torch.randn(batch, 10, p, p, generator=g), "lidar": torch.randn(batch, 2, p, p, generator=g)}


def test_tokens_of_each_modality_in_order():
    torch.manual_seed(0)
    projection = ModalityProjection(["hs", "lidar"], [10, 2], 3, width=16)
    inputs = _inputs()
    tokens = projection(inputs, torch.ones(3, 2, dtype=torch.bool))
    assert tokens.shape == (3, 2 * 9, 16)
    hs, lidar = projection.modality_slices()
    # token k of the hs group is pixel k (row-major) of the hs patch
    pixel = inputs["hs"][1, :, 1, 2]
    expected = projection.band_maps["hs"](pixel) + projection.position[5] + projection.modality[0]
    assert torch.allclose(tokens[1, hs][5], expected, atol=1e-6)
    assert torch.allclose(tokens[1, lidar][5] - projection.band_maps["lidar"](inputs["lidar"][1, :, 1, 2]),
                          projection.position[5] + projection.modality[1], atol=1e-6)


def test_missing_modality_tokens_are_zeros():
    torch.manual_seed(0)
    projection = ModalityProjection(["hs", "lidar"], [10, 2], 3, width=16)
    available = torch.tensor([[1, 0], [0, 1], [1, 1]], dtype=torch.bool)
    inputs = _inputs()
    inputs["lidar"][0] = float("nan")
    tokens = projection(inputs, available)
    hs, lidar = projection.modality_slices()
    assert torch.equal(tokens[0, lidar], torch.zeros(9, 16))
    assert torch.equal(tokens[1, hs], torch.zeros(9, 16))
    assert (tokens[2].abs().sum(dim=-1) > 0).all()
    assert torch.isfinite(tokens).all()


def test_missing_modality_tokens_can_be_a_learnable_dummy():
    torch.manual_seed(0)
    projection = ModalityProjection(["hs", "lidar"], [10, 2], 3, width=16, missing_tokens="dummy")
    available = torch.tensor([[1, 0], [1, 0], [1, 1]], dtype=torch.bool)
    tokens = projection(_inputs(), available)
    _, lidar = projection.modality_slices()
    assert torch.equal(tokens[0, lidar], projection.dummy[1].detach())
    assert torch.equal(tokens[1, lidar], projection.dummy[1].detach())
    tokens.sum().backward()
    assert projection.dummy.grad[1].abs().sum() > 0 and projection.dummy.grad[0].abs().sum() == 0


def test_unknown_missing_token_mode_is_refused():
    with pytest.raises(ValueError, match="missing_tokens"):
        ModalityProjection(["hs"], [10], 3, width=16, missing_tokens="mean")
