"""LVPCnet: two stages through the interface, prompt compensation, language features, checkpoints."""

from __future__ import annotations

import logging

import pytest
import torch

from models import ModelConfig, build_model, load_checkpoint, save_checkpoint
from models.lvpcnet import LVPCNet, class_text_contrastive
from models.text import class_texts

THREE = (["hs", "sar", "dsm"], [30, 4, 1])
CLASSES = ["Apple trees", "Buildings", "Ground", "Woods", "Vineyard", "Roads"]


def lvpc_config(modalities=(["hs", "lidar"], [63, 2]), kinds=None, descriptions=None, **params) -> ModelConfig:
    names, bands = modalities
    return ModelConfig(
        method="lvpcnet", modalities=list(names), bands=list(bands), num_classes=6, patch_size=3, backbone="tiny",
        kinds=kinds or list(names), class_names=CLASSES, class_descriptions=descriptions, params=params,
    )


@pytest.fixture(scope="module")
def model() -> LVPCNet:
    torch.manual_seed(0)
    built = build_model(lvpc_config())
    assert isinstance(built, LVPCNet)
    return built


def batch(config: ModelConfig, n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    p = config.patch_size
    return {name: torch.randn(n, c, p, p, generator=g) for name, c in zip(config.modalities, config.bands)}


def test_stages_are_align_then_prompt(model):
    assert model.stages() == ["align", "prompt"]
    align = {id(p) for p in model.configure_stage("align")}
    prompt = {id(p) for p in model.configure_stage("prompt")}
    assert not align & prompt
    assert prompt == {id(p) for p in model.compensation_parameters()}
    assert len(align) + len(prompt) == len(list(model.parameters()))
    with pytest.raises(ValueError, match="unknown training stage"):
        model.configure_stage("main")


def test_stage_two_changes_only_prompts_and_convs():
    torch.manual_seed(0)
    model = build_model(lvpc_config()).train()
    config = model.config
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimiser = torch.optim.AdamW(model.configure_stage("prompt"), lr=1e-2, weight_decay=1e-2)
    generator = torch.Generator().manual_seed(0)
    for step in range(3):
        available = model.training_availability(torch.ones(16, 2, dtype=torch.bool), generator)
        assert (available.sum(dim=1) == 1).all()  # one of two dropped from every sample
        parts = model.training_loss(batch(config, 16, step), available, torch.arange(16) % 6, "prompt")
        optimiser.zero_grad()
        parts["loss"].backward()
        optimiser.step()
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    trainable = {k for k in before if k.startswith(("prompts.", "convs."))}
    assert changed and changed <= trainable
    assert {"prompts.hs", "prompts.lidar", "convs.hs.lidar.weight", "convs.lidar.hs.weight"} <= changed


def test_prompt_stage_trains_the_head_only_when_asked():
    torch.manual_seed(0)
    asked = build_model(lvpc_config(prompt_trains_head=True))
    default = build_model(lvpc_config())
    trained = {id(p) for p in asked.configure_stage("prompt")}
    assert {id(p) for p in asked.head.parameters()} <= trained
    assert {id(p) for p in asked.compensation_parameters()} <= trained
    assert not any(p.requires_grad for p in asked.shared.parameters())
    default.configure_stage("prompt")
    assert not any(p.requires_grad for p in default.head.parameters())


def test_prompt_stage_keeps_single_modality_samples():
    torch.manual_seed(0)
    model = build_model(lvpc_config(THREE))
    model.configure_stage("prompt")
    available = torch.tensor([[1, 1, 1], [1, 0, 1], [0, 1, 0], [1, 1, 0]], dtype=torch.bool)
    dropped = model.training_availability(available, torch.Generator().manual_seed(0))
    assert (dropped & ~available).sum() == 0
    assert dropped.sum(dim=1).tolist() == [2, 1, 1, 1]
    model.configure_stage("align")
    assert torch.equal(model.training_availability(available), available)


def test_language_features_differ_between_modalities(model):
    shared, specific = model.text_shared, model.text_specific
    assert specific.shape == (2, 6, shared.shape[1])
    assert torch.allclose(specific.norm(dim=-1), torch.ones(2, 6))
    assert not torch.allclose(specific[0], specific[1], atol=1e-3)
    assert not torch.allclose(specific[0], shared, atol=1e-3)
    cosine = (specific[0] * specific[1]).sum(dim=-1)
    assert (cosine < 0.999).all()


def test_catalog_descriptions_reach_the_features():
    texts = class_texts(["Woods"], ["hs", "lidar"], [{"shared": "dense trees", "lidar": "crowns 10 to 20 m high"}])
    assert texts.shared == ["a remote sensing image of woods: dense trees"]
    assert texts.per_modality == [
        ["a hyperspectral image of woods, showing its colour and material"],
        ["a LiDAR elevation model of woods: crowns 10 to 20 m high"],
    ]
    plain = build_model(lvpc_config(untrained_text="encoder")).text_specific
    described = [{} for _ in CLASSES]
    described[3] = {"lidar": "tall irregular crowns 10 to 20 m high"}
    other = build_model(lvpc_config(descriptions=described, untrained_text="encoder")).text_specific
    assert torch.equal(plain[0], other[0])  # HS sentences unchanged
    assert torch.equal(plain[1, :3], other[1, :3]) and not torch.allclose(plain[1, 3], other[1, 3])


def test_without_text_weights_class_features_are_orthonormal_codes():
    model = build_model(lvpc_config())
    for table in (model.text_shared, *model.text_specific):
        gram = table @ table.T
        assert torch.allclose(gram, torch.eye(len(CLASSES)), atol=1e-5)
    random_tower = build_model(lvpc_config(untrained_text="encoder")).text_shared
    off_diagonal = (random_tower @ random_tower.T)[~torch.eye(len(CLASSES), dtype=torch.bool)]
    assert off_diagonal.min() > 0.5  # why codes: a random tower maps every class to nearly one direction


def test_compensation_is_used_exactly_where_a_modality_is_missing(model):
    model.eval()
    inputs = batch(model.config, 3)
    available = torch.tensor([[True, True], [True, False], [False, True]])
    with torch.no_grad():
        out = model.features(inputs, available)
        assert torch.equal(out.compensated, ~available)
        saved = model.prompts["lidar"].detach().clone()
        model.prompts["lidar"].add_(torch.randn(saved.shape, generator=torch.Generator().manual_seed(0)))
        shifted = model.features(inputs, available)
        model.prompts["lidar"].copy_(saved)
    assert not torch.allclose(out.specific[1, 1], shifted.specific[1, 1])  # LiDAR compensated: prompts matter
    assert torch.equal(out.specific[[0, 2], 1], shifted.specific[[0, 2], 1])  # LiDAR present: they do not
    assert torch.equal(out.specific[:, 0], shifted.specific[:, 0])


@pytest.mark.parametrize("three", [False, True])
def test_values_of_missing_modalities_are_ignored(three):
    torch.manual_seed(0)
    config = lvpc_config(THREE, kinds=["hs", "sar", "lidar"]) if three else lvpc_config()
    model = build_model(config).eval()
    inputs = batch(config, 4)
    m = len(config.modalities)
    available = torch.ones(4, m, dtype=torch.bool)
    available[1, 0] = available[2, m - 1] = False
    available[3, : m - 1] = False
    garbage = {name: x.clone() for name, x in inputs.items()}
    for b, i in (~available).nonzero().tolist():
        garbage[config.modalities[i]][b] = float("nan") if b % 2 else 1e4
    with torch.no_grad():
        assert torch.equal(model(inputs, available), model(garbage, available))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(garbage, available)
    assert torch.isfinite(low.float()).all()


def test_alignment_cross_entropy_sees_incomplete_samples_by_default(model):
    model.configure_stage("align")
    inputs = batch(model.config, 6)
    targets = torch.arange(6)
    available = torch.tensor([[True, False]] * 6)
    parts = model.training_loss(inputs, available, targets, "align")
    expected = torch.nn.functional.cross_entropy(model.features(inputs, available, compensate=False).logits, targets)
    assert parts["ce"] > 0 and torch.allclose(parts["ce"], expected)
    parts["loss"].backward()
    assert model.head.weight.grad is not None and model.head.weight.grad.abs().sum() > 0
    assert model.specific["lidar"].blocks[0].mlp.c_fc.weight.grad is None  # LiDAR missing everywhere
    model.zero_grad(set_to_none=True)


def test_alignment_cross_entropy_on_complete_samples_only_when_asked():
    torch.manual_seed(0)
    built = build_model(lvpc_config(align_ce="complete"))
    assert isinstance(built, LVPCNet)
    built.configure_stage("align")
    inputs = batch(built.config, 6)
    available = torch.tensor([[True, False]] * 6)
    parts = built.training_loss(inputs, available, torch.arange(6), "align")
    assert parts["ce"] == 0 and parts["align"] > 0  # no complete sample: alignment of HS only
    parts["loss"].backward()
    assert built.specific["hs"].blocks[0].mlp.c_fc.weight.grad is not None
    assert built.head.weight.grad is None or built.head.weight.grad.abs().sum() == 0


def test_align_ce_must_be_a_known_choice():
    with pytest.raises(ValueError, match="align_ce must be 'complete' or 'all'"):
        build_model(lvpc_config(align_ce="some"))


def test_contrastive_loss_prefers_features_on_their_class_text():
    text = torch.nn.functional.normalize(torch.randn(4, 8, generator=torch.Generator().manual_seed(0)), dim=-1)
    targets = torch.tensor([0, 0, 1, 2, 3, 3])
    aligned = class_text_contrastive(text[targets] * 3, text, targets, 0.07)
    shuffled = class_text_contrastive(text[(targets + 1) % 4], text, targets, 0.07)
    assert aligned < 0.3 and shuffled > 3  # not 0: the two class-0 pixels share its text


def test_checkpoint_holds_the_language_features(model, tmp_path, caplog):
    model.eval()
    save_checkpoint(model, tmp_path / "ckpt")
    with caplog.at_level(logging.WARNING, logger="models.text"):
        loaded, _ = load_checkpoint(tmp_path / "ckpt")
    assert not [r for r in caplog.records if r.name == "models.text"]  # the text tower was not built
    assert torch.equal(loaded.text_specific, model.text_specific) and torch.equal(loaded.text_shared, model.text_shared)
    inputs = batch(model.config, 3)
    available = torch.tensor([[True, True], [True, False], [False, True]])
    with torch.no_grad():
        assert torch.equal(model(inputs, available), loaded(inputs, available))


def test_text_weights_only_for_the_clip_preset():
    with pytest.raises(ValueError, match="no pretrained weights"):
        build_model(lvpc_config(text_preset="tiny", text_pretrained="/nonexistent/clip.safetensors"))


# -- the dense path ---------------------------------------------------------------------------------------


def dense_crop(config: ModelConfig, height: int, width: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {name: torch.randn(2, c, height, width, generator=g) for name, c in zip(config.modalities, config.bands)}


def test_dense_compensation_is_used_exactly_where_a_pixel_misses_a_modality(model):
    model.eval()
    inputs = dense_crop(model.config, 12, 14)
    available = torch.ones(2, 2, 12, 14, dtype=torch.bool)
    available[0, 1, 3:9, 2:10] = False  # a LiDAR gap
    available[1, 0, :, :5] = False  # clouds over the HS
    available[1, :, 10:, 10:] = False  # nothing at all: nothing to compensate from
    with torch.no_grad():
        out = model.dense_outputs(inputs, available)
        plain = model.dense_outputs(inputs, available, compensate=False)
        saved = model.prompts["lidar"].detach().clone()
        model.prompts["lidar"].add_(torch.randn(saved.shape, generator=torch.Generator().manual_seed(0)))
        shifted = model.dense_outputs(inputs, available)
        model.prompts["lidar"].copy_(saved)
    assert out.logits.shape == (2, 6, 12, 14)
    expected = ~available & available.any(dim=1, keepdim=True)
    assert torch.equal(out.compensated, expected) and not plain.compensated.any()
    gap = ~available[0, 1] & available[0, 0]
    # LiDAR's specific feature: the prompted encoder's in the gap (its prompts matter there), the plain one elsewhere
    assert not torch.allclose(out.specific[0, 1][gap], shifted.specific[0, 1][gap])
    assert torch.equal(out.specific[0, 1][~gap], shifted.specific[0, 1][~gap])
    assert torch.equal(out.specific[0, 1][~gap], plain.specific[0, 1][~gap])
    assert torch.equal(out.specific[0, 0], plain.specific[0, 0])  # HS is never compensated in crop 0
    # the head reads the shared features averaged over the modalities each pixel has, and every specific feature
    weights = available.permute(1, 0, 2, 3).float().unsqueeze(-1)  # (M, B, H, W, 1)
    shared = (out.shared * weights).sum(dim=0) / weights.sum(dim=0).clamp(min=1.0)
    features = torch.cat([shared, out.specific.permute(0, 2, 3, 1, 4).flatten(3)], dim=-1)
    with torch.no_grad():
        torch.testing.assert_close(out.logits, model.head(features).permute(0, 3, 1, 2))


def test_the_dense_losses_follow_the_two_stages():
    torch.manual_seed(0)
    model = build_model(lvpc_config())
    inputs = dense_crop(model.config, 10, 10, seed=1)
    real = torch.ones(2, 2, 10, 10, dtype=torch.bool)
    targets = torch.full((2, 10, 10), -1)
    targets[:, 2:8:2, 2:8:2] = torch.arange(9).view(3, 3) % 6
    model.configure_stage("align")
    parts = model.dense_training_loss(inputs, real, real, targets, None, 0, "align")
    assert parts["align"] > 0 and torch.isclose(parts["loss"], parts["ce"] + parts["align"])
    # stage prompt: every region with both modalities loses one, and only the compensation learns
    model.configure_stage("prompt")
    regions = model.dense_training_patterns(torch.ones(300, 2, dtype=torch.bool), torch.Generator().manual_seed(0))
    assert torch.equal(regions.sum(dim=1), torch.ones(300, dtype=torch.long))
    shown = real.clone()
    shown[:, 1, :, 5:] = False  # LiDAR withheld over the right half
    model.zero_grad(set_to_none=True)
    parts = model.dense_training_loss(inputs, shown, real, targets, None, 0, "prompt")
    parts["loss"].backward()
    trained = {name for name, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert trained and all(name.startswith(("prompts.", "convs.")) for name in trained), trained
    assert "prompts.lidar" in trained and parts["align"] > 0
