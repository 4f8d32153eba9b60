"""MaMOL: the pattern-aware router, static coefficients, placement, ablations, freezing."""

from __future__ import annotations

import time

import pytest
import torch

from models import ModelConfig, build_model
from models.mamol import MaMOL

THREE = (["hs", "sar", "dsm"], [30, 4, 1])


def test_changing_only_available_changes_the_gates(make_config, make_batch):
    torch.manual_seed(0)
    config = make_config("mamol")
    model = build_model(config).eval()
    inputs = make_batch(config, batch=2)
    complete = model.gates(inputs, torch.ones(2, 2, dtype=torch.bool))
    lidar_missing = model.gates(inputs, torch.tensor([[True, False]] * 2))
    assert sorted(complete) == [0, 1, 2, 3]
    for layer in complete:
        assert complete[layer].shape == (2, 2 * 25, 2)
        assert not torch.allclose(complete[layer], lidar_missing[layer])


def test_router_sees_the_pattern_not_only_the_tokens(make_config):
    """Same tokens z, different missing pattern: different gate probabilities."""
    torch.manual_seed(0)
    model = build_model(make_config("mamol", top_k=2)).eval()
    router = model.mixtures["3"].router
    z = torch.randn(4, 10, model.backbone.width)
    available = torch.tensor([[1, 1], [1, 0], [0, 1], [1, 1]], dtype=torch.bool)
    m_type = model.pattern_embedding(model.pattern_codes(available))
    gates = router(z[:1].expand(4, -1, -1), m_type)
    assert not torch.allclose(gates[0], gates[1]) and not torch.allclose(gates[1], gates[2])
    assert torch.equal(gates[0], gates[3])  # same pattern, same tokens
    assert model.pattern_codes(available).tolist() == [3, 1, 2, 3]


@pytest.mark.parametrize("top_k", [1, 2])
def test_top_k_keeps_k_experts_per_token(top_k, make_config, make_batch):
    torch.manual_seed(0)
    config = make_config("mamol", num_dynamic_experts=3, top_k=top_k)
    gates = build_model(config).gates(make_batch(config), torch.ones(4, 2, dtype=torch.bool))
    for g in gates.values():
        assert ((g > 0).sum(dim=-1) == top_k).all()
        assert (g.sum(dim=-1) <= 1 + 1e-6).all()


def test_static_coefficients_follow_the_present_modalities(make_config):
    model = build_model(make_config("mamol", THREE, num_shared_experts=2))
    available = torch.tensor([[1, 1, 1], [1, 0, 1], [0, 0, 1], [0, 0, 0]], dtype=torch.bool)
    s = model.mixtures["3"].static_coefficients(available)
    third, half = 1 / 3, 1 / 2
    expected = torch.tensor(
        [[1, 1, third, third, third], [1, 1, half, 0, half], [1, 1, 0, 0, 1], [1, 1, 0, 0, 0]], dtype=torch.float32
    )
    assert torch.allclose(s, expected)
    assert not any("static" in name and "coef" in name for name, _ in model.named_parameters())


def test_expert_placement_and_count(make_config):
    tiny_depth = 4
    assert build_model(make_config("mamol")).expert_layers == list(range(tiny_depth))  # 6 clamped to 4
    last = build_model(make_config("mamol", num_expert_layers=2, num_dynamic_experts=5))
    assert last.expert_layers == [2, 3]
    assert last.mixtures["2"].dynamic.num_experts == 5
    head = build_model(make_config("mamol", expert_layers="head", num_expert_layers=2))
    assert head.expert_layers == [0, 1] and sorted(head.mixtures) == ["0", "1"]
    with pytest.raises(ValueError, match="expert_layers"):
        build_model(make_config("mamol", expert_layers="middle"))


def test_ablation_switches(make_config, make_batch):
    torch.manual_seed(0)
    full = build_model(make_config("mamol", THREE))
    no_dynamic = build_model(make_config("mamol", THREE, use_dynamic=False))
    no_static = build_model(make_config("mamol", THREE, use_static=False))
    shared_only = build_model(make_config("mamol", THREE, use_modality_experts=False))
    mixture = full.mixtures["3"]
    assert mixture.router is not None and mixture.static.num_experts == 1 + 3
    assert no_dynamic.mixtures["3"].router is None and no_dynamic.pattern_embedding is None
    assert no_static.mixtures["3"].static is None
    assert shared_only.mixtures["3"].static.num_experts == 1

    def count(m):
        return sum(p.numel() for p in m.parameters())

    assert count(full) > count(shared_only) > count(no_static)
    assert count(no_dynamic) < count(full)
    config = make_config("mamol", THREE, use_dynamic=False)
    inputs = make_batch(config)
    assert no_dynamic.gates(inputs, torch.ones(4, 3, dtype=torch.bool)) == {}
    assert no_dynamic(inputs, torch.ones(4, 3, dtype=torch.bool)).shape == (4, 6)


def test_frozen_backbone_step_trains_only_the_adapters(make_config, make_batch):
    torch.manual_seed(0)
    config = make_config("mamol", freeze_backbone=True)
    model = build_model(config)
    params = model.configure_stage("main")
    assert all(not p.requires_grad for p in model.backbone.parameters())
    assert {id(p) for p in params}.isdisjoint({id(p) for p in model.backbone.parameters()})
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimiser = torch.optim.Adam(params, lr=1e-2)
    inputs = make_batch(config)
    available = torch.tensor([[1, 1], [1, 0], [0, 1], [1, 1]], dtype=torch.bool)
    targets = torch.tensor([0, 1, 2, 3])
    for _ in range(2):  # B starts at zero: the first step moves B, the second A and the router
        optimiser.zero_grad()
        model.training_loss(inputs, available, targets, "main")["loss"].backward()
        optimiser.step()
    after = dict(model.named_parameters())
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert not any(name.startswith("backbone.") for name in changed)
    for expected in [
        "head.weight",
        "projection.band_maps.hs.weight",
        "projection.band_maps.lidar.weight",
        "projection.position",
        "mixtures.3.dynamic.up",
        "mixtures.3.dynamic.down",
        "mixtures.3.static.up",
        "mixtures.3.router.gate.weight",
        "mixtures.0.norm.weight",
        "pattern_embedding.weight",
    ]:
        assert expected in changed, expected


def test_without_pretrained_weights_everything_trains(make_config, caplog):
    with caplog.at_level("WARNING"):
        model = build_model(make_config("mamol"))
    assert "trains from scratch" in caplog.text
    assert not model.backbone_frozen
    assert all(p.requires_grad for p in model.parameters())


def test_fresh_mixture_starts_as_the_normalised_frozen_ffn(make_config, make_batch):
    """B = 0 at init: the experts add nothing until trained."""
    torch.manual_seed(0)
    config = make_config("mamol")
    model = build_model(config).eval()
    inputs = make_batch(config)
    available = torch.ones(4, 2, dtype=torch.bool)
    for mixture in model.mixtures.values():
        mixture.dynamic.up.data.normal_()
    changed = model(inputs, available)
    for mixture in model.mixtures.values():
        mixture.dynamic.up.data.zero_()
        mixture.static.up.data.zero_()
    zeroed = model(inputs, available)
    no_experts = build_model(make_config("mamol", use_dynamic=False, use_static=False))
    no_experts.load_state_dict(model.state_dict(), strict=False)
    assert torch.allclose(zeroed, no_experts.eval()(inputs, available), atol=1e-6)
    assert not torch.allclose(changed, zeroed)


def test_vit_b16_trainable_parameters_are_few():
    started = time.perf_counter()
    config = ModelConfig("mamol", ["hs", "lidar"], [63, 2], 6, patch_size=7, backbone="ViT-B-16",
                         params={"freeze_backbone": True})
    model = build_model(config)
    assert isinstance(model, MaMOL)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.configure_stage("main"))
    print(f"MaMOL ViT-B-16: {trainable:,} trainable of {total:,} parameters ({100 * trainable / total:.2f}%), "
          f"built in {time.perf_counter() - started:.1f} s")
    assert model.expert_layers == list(range(6, 12))
    assert 85_000_000 < total < 90_000_000
    assert trainable < 0.02 * total


def test_parameter_count_on_vit_b_16_with_the_backbone_frozen() -> None:
    """MaMOL on the paper's backbone, HS (63 bands) + LiDAR (2), 6 classes, 7 x 7 patches, default params.

    docs/methods.md explains these numbers and their difference from the paper's 3.6 M trainable parameters.
    """
    config = ModelConfig(method="mamol", modalities=["hs", "lidar"], bands=[63, 2], num_classes=6, patch_size=7,
                         backbone="ViT-B-16", params={"freeze_backbone": True})
    model = build_model(config)
    trainable = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            trainable[name.split(".")[0]] = trainable.get(name.split(".")[0], 0) + p.numel()
    assert sum(p.numel() for p in model.backbone.parameters()) == 85_057_536
    assert not any(p.requires_grad for p in model.backbone.parameters())
    # projection: band maps, patch position and modality embeddings, and the dense path's 2 x 2 window positions
    # and 5 x 5 depthwise local convolutions (one per modality)
    assert trainable == {"mixtures": 686_220, "projection": 132_096, "head": 9_222, "pattern_embedding": 128}
    assert sum(trainable.values()) == 827_666
