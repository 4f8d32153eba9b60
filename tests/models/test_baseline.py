"""The baseline: MaMOL's projection and backbone, no experts."""

from __future__ import annotations

import torch

from models import build_model
from models.baseline import Baseline


def test_baseline_is_projection_backbone_head(make_config):
    model = build_model(make_config("baseline"))
    assert isinstance(model, Baseline)
    top_level = {name.split(".")[0] for name, _ in model.named_parameters()}
    assert top_level == {"backbone", "projection", "head"}
    assert model.head.in_features == 2 * model.backbone.width


def test_frozen_baseline_trains_projection_and_head_only(make_config, make_batch):
    torch.manual_seed(0)
    config = make_config("baseline", freeze_backbone=True)
    model = build_model(config)
    params = model.configure_stage("main")
    names = {name for name, p in model.named_parameters() if any(p is q for q in params)}
    assert names and all(name.startswith(("projection.", "head.")) for name in names)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimiser = torch.optim.Adam(params, lr=1e-2)
    available = torch.tensor([[1, 1], [1, 0], [0, 1], [1, 1]], dtype=torch.bool)
    model.training_loss(make_batch(config), available, torch.tensor([0, 1, 2, 3]), "main")["loss"].backward()
    optimiser.step()
    for name, p in model.named_parameters():
        # the dense path's window position embedding and local convolution get no gradient from a patch batch
        dense_only = ("projection.window_position", "projection.local.")
        assert torch.equal(p, before[name]) == name.startswith(("backbone.", *dense_only)), name


def test_baseline_matches_mamol_without_experts(make_config, make_batch):
    """Same backbone, projection and head: MaMOL without experts adds only its FFN LayerNorms."""
    torch.manual_seed(0)
    baseline = build_model(make_config("baseline")).eval()
    mamol = build_model(make_config("mamol", use_dynamic=False, use_static=False)).eval()
    missing = mamol.load_state_dict(baseline.state_dict(), strict=False)
    assert missing.missing_keys
    assert all(key.startswith("mixtures.") and key.endswith((".norm.weight", ".norm.bias"))
               for key in missing.missing_keys)
    assert not missing.unexpected_keys
