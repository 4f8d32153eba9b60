"""The backbone: open_clip's vision transformer, as a stack of blocks over tokens.

Presets name a (width, layers, heads) shape. ``ViT-B-16`` is CLIP's vision
tower (the paper's) and is the only preset that can take CLIP weights; the
smaller presets are for CPU runs and train from scratch.

The backbone is ``ln_pre -> blocks -> ln_post`` exactly as in CLIP's
``VisionTransformer``; the patch embedding, class token and position
embedding of CLIP are not used (``models.projection`` makes the tokens).
Methods call the blocks one by one (see :func:`attention_step` and
:func:`ffn_input`) so that they can change the FFN of some blocks without
touching the frozen weights.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import open_clip
import torch
from open_clip.transformer import (
    LayerNorm,
    QuickGELU,
    ResidualAttentionBlock,
    Transformer,
)
from torch import Tensor, nn

log = logging.getLogger(__name__)

CLIP_MODEL = "ViT-B-16"


class BackbonePreset(NamedTuple):
    width: int
    layers: int
    heads: int


PRESETS: dict[str, BackbonePreset] = {
    "ViT-B-16": BackbonePreset(768, 12, 12),
    "small": BackbonePreset(384, 8, 6),
    "mini": BackbonePreset(192, 6, 3),
    "tiny": BackbonePreset(128, 4, 4),
}


class PretrainedWeightsNotFoundError(FileNotFoundError):
    """A local CLIP weights file named by ``model.pretrained`` does not exist."""


class PretrainedWeightsError(RuntimeError):
    """CLIP weights (a local file or an open_clip tag) could not be read, downloaded or loaded."""


_skip_pretrained: contextvars.ContextVar[bool] = contextvars.ContextVar("skip_pretrained", default=False)


@contextlib.contextmanager
def skip_pretrained_weights() -> Iterator[None]:
    """Build backbones with the architecture only, without reading CLIP weights.

    Used when every weight comes from a checkpoint anyway, so that loading a
    checkpoint never needs the CLIP file or a network.
    """
    token = _skip_pretrained.set(True)
    try:
        yield
    finally:
        _skip_pretrained.reset(token)


def pretrained_weights_skipped() -> bool:
    """Whether :func:`skip_pretrained_weights` is active: weights (and precomputed buffers) will come from a checkpoint."""
    return _skip_pretrained.get()


def uses_quick_gelu(preset: str, pretrained: str | None, override: bool | None = None) -> bool:
    """Whether the blocks use QuickGELU (OpenAI CLIP weights do, LAION weights do not).

    Decided from the config alone, so a checkpoint rebuilds the same
    architecture without the weights file. ``override`` is ``params["quick_gelu"]``.
    """
    if override is not None:
        return bool(override)
    if _pretrained_here(pretrained):
        return False  # pipeline.pretrain builds its backbones with GELU
    if preset != CLIP_MODEL or pretrained is None:
        return False
    tag_cfg = open_clip.get_pretrained_cfg(CLIP_MODEL, str(pretrained))
    if tag_cfg:
        return bool(tag_cfg.get("quick_gelu", False))
    return True  # a local file: the paper's weights are OpenAI's CLIP


class Backbone(nn.Module):
    """``ln_pre``, open_clip ``Transformer`` blocks, ``ln_post``, on (B, L, width) tokens."""

    def __init__(self, preset: str, quick_gelu: bool = False) -> None:
        super().__init__()
        if preset not in PRESETS:
            raise ValueError(f"unknown backbone preset {preset!r}; presets: {sorted(PRESETS)}")
        self.preset = preset
        self.width, self.layers, self.heads = PRESETS[preset]
        self.ln_pre = LayerNorm(self.width)
        self.transformer = Transformer(
            self.width, self.layers, self.heads, act_layer=QuickGELU if quick_gelu else nn.GELU
        )
        self.ln_post = LayerNorm(self.width)

    @property
    def blocks(self) -> nn.ModuleList:
        return self.transformer.resblocks

    def forward(self, tokens: Tensor) -> Tensor:
        x = self.ln_pre(tokens)
        for block in self.blocks:
            x = block(x)
        return self.ln_post(x)


def attention_step(block: ResidualAttentionBlock, x: Tensor) -> Tensor:
    """The attention half of a block: ``x + ls_1(attn(ln_1(x)))``."""
    return x + block.ls_1(block.attention(q_x=block.ln_1(x)))


def ffn_input(block: ResidualAttentionBlock, x: Tensor) -> Tensor:
    """What the block's FFN sees: ``ln_2(x)`` (the ``z`` of the MaMOL equations)."""
    return block.ln_2(x)


def build_backbone(preset: str, pretrained: str | os.PathLike[str] | None, quick_gelu: bool | None = None) -> Backbone:
    """The backbone for ``preset``, with CLIP weights when ``pretrained`` names them.

    Args:
        preset: a key of :data:`PRESETS`.
        pretrained: None (random init, trains from scratch), a local CLIP
            weights file (what open_clip saves: ``.safetensors`` or ``.bin``),
            an open_clip tag such as ``"openai"`` (downloaded), or a backbone
            file of ``python -m pipeline.pretrain`` (any preset, ``models.pretraining``).
        quick_gelu: force the activation; by default from :func:`uses_quick_gelu`.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown backbone preset {preset!r}; presets: {sorted(PRESETS)}")
    if pretrained is not None and preset != CLIP_MODEL and not _pretrained_here(pretrained):
        raise ValueError(
            f"backbone preset {preset!r} has no pretrained weights (model.pretrained={str(pretrained)!r}); "
            f"only {CLIP_MODEL!r} can load CLIP weights: "
            f"set model.pretrained to null or model.backbone to {CLIP_MODEL!r}"
        )
    quick = uses_quick_gelu(preset, None if pretrained is None else str(pretrained), quick_gelu)
    backbone = Backbone(preset, quick_gelu=quick)
    if _skip_pretrained.get():
        return backbone  # every weight comes from a checkpoint: nothing to read, nothing to warn about
    if pretrained is None:
        log.warning("backbone %s has no pretrained weights: it trains from scratch", preset)
    elif _pretrained_here(pretrained):
        from models.pretraining import load_pretrained_backbone

        load_pretrained_backbone(backbone, pretrained)
    else:
        load_clip_weights(backbone, str(pretrained), quick)
    return backbone


def _pretrained_here(pretrained: str | os.PathLike[str] | None) -> bool:
    """Whether ``pretrained`` is a backbone file of ``python -m pipeline.pretrain`` (``models.pretraining``), not CLIP's."""
    from models.pretraining import is_pretrained_backbone

    return is_pretrained_backbone(pretrained)


def load_clip_weights(backbone: Backbone, pretrained: str, quick_gelu: bool) -> None:
    """Copy CLIP ViT-B-16's vision ``ln_pre``, blocks and ``ln_post`` into ``backbone``."""
    is_tag = bool(open_clip.get_pretrained_cfg(CLIP_MODEL, pretrained))
    if not is_tag and not Path(pretrained).is_file():
        raise PretrainedWeightsNotFoundError(
            f"CLIP weights file {pretrained!r} (catalog key model.pretrained) does not exist. "
            f"Put the {CLIP_MODEL} open_clip weights (e.g. open_clip_model.safetensors from "
            f"https://huggingface.co/timm/vit_base_patch16_clip_224.openai) at that path, "
            f"or set model.pretrained to an open_clip tag "
            f"({', '.join(open_clip.list_pretrained_tags_by_model(CLIP_MODEL))}) where you have a network, "
            f"or to null to train from scratch"
        )
    try:
        clip = open_clip.create_model(CLIP_MODEL, pretrained=pretrained, force_quick_gelu=quick_gelu)
    except pickle.UnpicklingError as error:  # torch's weights-only loader met more than tensors
        raise PretrainedWeightsError(
            f"CLIP weights file {pretrained!r} (catalog key model.pretrained) is a pickle that holds more than "
            f"tensors: refused, since loading it could run code. Use open_clip's safetensors weights "
            f"(open_clip_model.safetensors from https://huggingface.co/timm/vit_base_patch16_clip_224.openai)"
        ) from error
    except Exception as error:
        where = "download" if is_tag else "read"
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise PretrainedWeightsError(
            f"could not {where} CLIP {CLIP_MODEL} weights {pretrained!r} (catalog key model.pretrained): {reason}. "
            f"Download the weights by hand (e.g. open_clip_model.safetensors from "
            f"https://huggingface.co/timm/vit_base_patch16_clip_224.openai) and set model.pretrained to the file's path"
        ) from error
    visual = clip.visual
    with torch.no_grad():
        backbone.ln_pre.load_state_dict(visual.ln_pre.state_dict())
        backbone.transformer.load_state_dict(visual.transformer.state_dict())
        backbone.ln_post.load_state_dict(visual.ln_post.state_dict())
    log.info("backbone %s: loaded CLIP weights from %s", CLIP_MODEL, pretrained)
