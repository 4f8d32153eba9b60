"""Language features of class descriptions: open_clip's text encoder and its bundled tokenizer.

Language-guided methods (LVPCnet) align visual features with text features of
class descriptions. The features are computed once, when the model is built,
and kept by the model as buffers: the text encoder is then dropped, so a
checkpoint holds the features and mapping never builds the text tower again.

Weights follow the backbone's rules (``models.backbone``): CLIP's text tower
takes the CLIP weights file (``model.pretrained``, a local file or an
open_clip tag); without weights the tower is randomly initialised, with a
fixed seed so the features are repeatable, and a warning says that the
language features carry no meaning. The tokenizer is open_clip's
``SimpleTokenizer`` with its BPE vocabulary bundled in the package: it
never downloads anything.

Texts per class:
    shared: the class as seen by any sensor, e.g. "a remote sensing image of woods: dense broadleaf trees".
    per modality kind: what that sensor sees (HS colour and material, LiDAR height,
    SAR backscatter and roughness, MSI reflectance), e.g.
    "a LiDAR elevation model of woods: tall irregular crowns".
A catalog's ``classes[].description`` (keys ``shared`` and kinds) supplies the part
after the colon; without it a templated sentence names the class and the property.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import NamedTuple

import open_clip
import torch
from open_clip.transformer import QuickGELU, TextTransformer
from torch import Tensor, nn

from models.backbone import (
    CLIP_MODEL,
    PretrainedWeightsError,
    PretrainedWeightsNotFoundError,
    uses_quick_gelu,
)

log = logging.getLogger(__name__)

SHARED = "shared"


class TextPreset(NamedTuple):
    width: int
    layers: int
    heads: int
    output_dim: int


TEXT_PRESETS: dict[str, TextPreset] = {
    CLIP_MODEL: TextPreset(512, 12, 8, 512),  # CLIP ViT-B-16's text tower; the only one that takes weights
    "tiny": TextPreset(128, 2, 4, 128),  # tests and CPU demos, random init
}
CONTEXT_LENGTH = 77
VOCAB_SIZE = 49408

# "<prefix> <class name>", then ": <catalog description>" or the default property.
PREFIXES: dict[str, str] = {
    SHARED: "a remote sensing image of {name}",
    "hs": "a hyperspectral image of {name}",
    "msi": "a multispectral image of {name}",
    "lidar": "a LiDAR elevation model of {name}",
    "sar": "a SAR image of {name}",
}
PROPERTIES: dict[str, str] = {
    SHARED: "",
    "hs": ", showing its colour and material",
    "msi": ", showing its colour and reflectance",
    "lidar": ", showing its height",
    "sar": ", showing its backscatter and surface roughness",
}


class ClassTexts(NamedTuple):
    """Sentences per class: ``shared`` (K,) and ``per_modality`` (M lists of K)."""

    shared: list[str]
    per_modality: list[list[str]]


def class_sentence(key: str, name: str, description: str | None) -> str:
    """One sentence for a class under ``key`` (``shared`` or a modality kind)."""
    prefix = PREFIXES.get(key, f"a {key} image of {{name}}").format(name=name)
    if description:
        return f"{prefix}: {description.strip()}"
    return prefix + PROPERTIES.get(key, "")


def class_texts(
    class_names: list[str], kinds: list[str], descriptions: list[dict[str, str]] | None = None
) -> ClassTexts:
    """Shared and per-modality sentences for every class (catalog descriptions over templated defaults).

    Args:
        class_names: class names, index order.
        kinds: the kind of each modality (``hs``, ``lidar``, ``sar``, ``msi``), modality order.
        descriptions: per class, text per key (``shared`` and kinds); missing entries take the default.
    """
    if descriptions is not None and len(descriptions) != len(class_names):
        raise ValueError(f"{len(descriptions)} class descriptions for {len(class_names)} classes")
    texts = descriptions or [{} for _ in class_names]
    lowered = [name.lower() for name in class_names]
    shared = [class_sentence(SHARED, name, text.get(SHARED)) for name, text in zip(lowered, texts)]
    per_modality = [[class_sentence(kind, name, text.get(kind)) for name, text in zip(lowered, texts)] for kind in kinds]
    return ClassTexts(shared, per_modality)


def text_feature_dim(preset: str) -> int:
    if preset not in TEXT_PRESETS:
        raise ValueError(f"unknown text encoder preset {preset!r}; presets: {sorted(TEXT_PRESETS)}")
    return TEXT_PRESETS[preset].output_dim


@torch.no_grad()
def encode_texts(
    sentences: list[str],
    preset: str,
    pretrained: str | os.PathLike[str] | None = None,
    quick_gelu: bool | None = None,
    seed: int = 0,
) -> Tensor:
    """L2-normalised text features (N, output_dim) of ``sentences``, float32 on CPU.

    Args:
        sentences: the texts; longer than 77 tokens are truncated by the tokenizer.
        preset: a key of :data:`TEXT_PRESETS`.
        pretrained: CLIP weights (local file or open_clip tag), only with the ``ViT-B-16`` preset.
        quick_gelu: force the activation; by default from ``models.backbone.uses_quick_gelu``.
        seed: seed of the random initialisation when there are no weights.
    """
    text_feature_dim(preset)
    tokens = open_clip.get_tokenizer(CLIP_MODEL)(sentences)
    if pretrained is not None:
        if preset != CLIP_MODEL:
            raise ValueError(
                f"text encoder preset {preset!r} has no pretrained weights (pretrained={str(pretrained)!r}); "
                f"only {CLIP_MODEL!r} can load CLIP weights"
            )
        clip = load_clip(str(pretrained), uses_quick_gelu(CLIP_MODEL, str(pretrained), quick_gelu))
        clip.eval()
        return clip.encode_text(tokens, normalize=True).float()
    log.warning(
        "text encoder %s has no pretrained weights: language features come from a randomly initialised "
        "encoder and carry no meaning (set model.pretrained to CLIP weights for meaningful ones)",
        preset,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tower = random_text_tower(preset, bool(quick_gelu))
    tower.eval()
    return nn.functional.normalize(tower(tokens).float(), dim=-1)


def random_text_tower(preset: str, quick_gelu: bool = False) -> TextTransformer:
    """open_clip's text transformer of ``preset`` with random weights."""
    width, layers, heads, output_dim = TEXT_PRESETS[preset]
    return TextTransformer(
        context_length=CONTEXT_LENGTH,
        vocab_size=VOCAB_SIZE,
        width=width,
        heads=heads,
        layers=layers,
        output_dim=output_dim,
        act_layer=QuickGELU if quick_gelu else nn.GELU,
    )


def load_clip(pretrained: str, quick_gelu: bool) -> open_clip.CLIP:
    """CLIP ViT-B-16 with the weights of ``pretrained`` (same file or tag as the backbone's)."""
    is_tag = bool(open_clip.get_pretrained_cfg(CLIP_MODEL, pretrained))
    if not is_tag and not Path(pretrained).is_file():
        raise PretrainedWeightsNotFoundError(
            f"CLIP weights file {pretrained!r} (catalog key model.pretrained or model.params.text_pretrained) "
            f"does not exist; it must hold the {CLIP_MODEL} open_clip weights (vision and text towers), "
            f"or set it to null for a random text encoder"
        )
    try:
        return open_clip.create_model(CLIP_MODEL, pretrained=pretrained, force_quick_gelu=quick_gelu)
    except Exception as error:
        where = "download" if is_tag else "read"
        raise PretrainedWeightsError(
            f"could not {where} CLIP {CLIP_MODEL} weights {pretrained!r} for the text encoder: {error}"
        ) from error
