"""The open_clip backbone: presets, CLIP weights from a file, clear errors when they are missing."""

from __future__ import annotations

import open_clip
import pytest
import torch
from open_clip.transformer import QuickGELU, Transformer
from safetensors.torch import save_file

from models import (
    PRESETS,
    ModelConfig,
    PretrainedWeightsError,
    PretrainedWeightsNotFoundError,
    build_model,
)
from models.backbone import build_backbone, skip_pretrained_weights, uses_quick_gelu


@pytest.mark.parametrize("preset", ["tiny", "mini", "small"])
def test_cpu_presets_are_open_clip_transformers(preset, caplog):
    with caplog.at_level("WARNING", logger="models.backbone"):
        backbone = build_backbone(preset, None)
    width, layers, heads = PRESETS[preset]
    assert isinstance(backbone.transformer, Transformer)
    assert backbone.width == width and len(backbone.blocks) == layers
    assert backbone.blocks[0].attn.num_heads == heads
    assert f"backbone {preset} has no pretrained weights: it trains from scratch" in caplog.text
    tokens = torch.randn(2, 9, width)
    assert backbone(tokens).shape == (2, 9, width)


def test_only_vit_b16_takes_clip_weights():
    assert PRESETS["ViT-B-16"] == (768, 12, 12)
    with pytest.raises(ValueError, match="only 'ViT-B-16' can load CLIP weights"):
        build_backbone("tiny", "openai")
    with pytest.raises(ValueError, match="unknown backbone preset"):
        build_backbone("huge", None)


def test_missing_weights_file_says_where_to_put_it(tmp_path):
    path = tmp_path / "clip" / "open_clip_model.safetensors"
    with pytest.raises(PretrainedWeightsNotFoundError) as info:
        build_backbone("ViT-B-16", str(path))
    assert isinstance(info.value, FileNotFoundError)
    message = str(info.value)
    assert str(path) in message and "model.pretrained" in message and "Put the ViT-B-16" in message


def test_unreadable_weights_file_is_a_clear_error(tmp_path):
    path = tmp_path / "open_clip_model.safetensors"
    path.write_bytes(b"not a weights file")
    with pytest.raises(PretrainedWeightsError, match="set model.pretrained to the file's path"):
        build_backbone("ViT-B-16", str(path))


def test_quick_gelu_follows_the_weights():
    assert uses_quick_gelu("ViT-B-16", "openai") is True
    assert uses_quick_gelu("ViT-B-16", "laion2b_s34b_b88k") is False
    assert uses_quick_gelu("ViT-B-16", "/data/clip.safetensors") is True
    assert uses_quick_gelu("ViT-B-16", None) is False
    assert uses_quick_gelu("ViT-B-16", "openai", override=False) is False


def test_checkpoint_loading_builds_without_the_weights_file(tmp_path):
    with skip_pretrained_weights():
        backbone = build_backbone("ViT-B-16", str(tmp_path / "gone.safetensors"))
    assert isinstance(backbone.blocks[0].mlp.gelu, QuickGELU)


@pytest.mark.slow
def test_clip_weights_from_a_local_file_are_loaded_and_frozen(tmp_path):
    """A CLIP ViT-B-16 state dict saved the way open_clip publishes it (safetensors) ends up in the backbone."""
    torch.manual_seed(0)
    clip = open_clip.create_model("ViT-B-16", pretrained=None, force_quick_gelu=True)
    path = tmp_path / "open_clip_model.safetensors"
    save_file({k: v.half().contiguous() for k, v in clip.state_dict().items()}, str(path))
    config = ModelConfig("mamol", ["hs", "lidar"], [63, 2], 6, backbone="ViT-B-16", pretrained=str(path))
    model = build_model(config)
    visual = clip.visual
    for name, expected in visual.transformer.state_dict().items():
        assert torch.equal(model.backbone.transformer.state_dict()[name], expected.half().float()), name
    assert torch.equal(model.backbone.ln_post.weight, visual.ln_post.weight.half().float())
    assert isinstance(model.backbone.blocks[0].mlp.gelu, QuickGELU)
    assert model.backbone_frozen and not any(p.requires_grad for p in model.backbone.parameters())
