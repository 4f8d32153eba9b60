"""LoRA experts: zero at init, per-expert coefficients, the same as E separate low-rank maps."""

from __future__ import annotations

import torch

from models.lora import LoRAExperts


def test_experts_add_nothing_at_init():
    experts = LoRAExperts(width=12, num_experts=3, rank=4)
    z = torch.randn(2, 5, 12)
    assert torch.equal(experts(z, torch.ones(2, 5, 3)), torch.zeros(2, 5, 12))


def test_mixture_equals_sum_of_coefficient_weighted_experts():
    torch.manual_seed(0)
    experts = LoRAExperts(width=12, num_experts=3, rank=4, alpha=8)
    experts.up.data.normal_()
    z = torch.randn(2, 5, 12)
    coefficients = torch.rand(2, 5, 3)
    down = experts.down.view(3, 4, 12)
    up = experts.up.view(3, 4, 12)
    expected = sum(coefficients[..., e : e + 1] * 2.0 * (z @ down[e].t() @ up[e]) for e in range(3))
    assert torch.allclose(experts(z, coefficients), expected, atol=1e-5)
    per_sample = torch.rand(2, 1, 3)  # one coefficient per sample broadcasts over tokens
    assert experts(z, per_sample).shape == (2, 5, 12)
