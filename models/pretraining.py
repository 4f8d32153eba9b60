"""Self-supervised pretraining of the backbone on unlabelled pixels: masked modelling over pixel tokens.

A P x P crop of every modality becomes P*P tokens per modality
(``models.projection``, the patch path: a crop through the blocks with full
attention inside it is one window of the dense path). Some tokens are hidden:
random single tokens, and one modality in a spatially coherent region of the
crop (a blob, a strip, or the whole crop, as clouds and missing flight lines
hide a modality). Hidden tokens enter the backbone as a missing modality's
tokens do downstream (zeros), so the backbone learns to predict one modality
from the other and from the neighbourhood. A linear decoder per modality
reconstructs the hidden tokens' normalised bands; the loss is the mean
squared error over hidden tokens whose pixel really has data, averaged per
modality (a 63-band HS token and a 2-band LiDAR token weigh the same).

On the dense path (``window_size`` set, :meth:`MaskedPixelModel.forward_dense`)
the crops are larger (e.g. 32 x 32) and go through the blocks as the dense
classifier runs them (``models.dense``: windows anchored to the scene grid,
shifted in odd blocks, the window position embedding, the local convolution
of ``local_kernel``): one pass reconstructs
every pixel of the crop instead of one patch per pixel, and the blocks learn
the attention pattern the dense classifier uses. The patch position
embedding does not train there and is not saved.

The result is a safetensors file holding the backbone (``backbone.*``) and the
tokenizer (``projection.*``), with metadata saying what it saw; ``model.pretrained``
takes it as it takes a CLIP file (:func:`is_pretrained_backbone`,
:func:`load_pretrained_backbone`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from models import dense
from models.backbone import Backbone, build_backbone
from models.projection import ModalityProjection

PRETRAINED_FORMAT = "mmlandcover-pretrained-backbone/1"


class MaskedPixelModel(nn.Module):
    """Tokenizer, backbone and one linear decoder per modality (tokens -> bands)."""

    dense_chunk_tokens: int = 8192
    """Tokens per call of a block on the dense path (a speed knob, as the classifier's)."""

    def __init__(self, modalities: list[str], bands: list[int], patch_size: int, preset: str,
                 window_size: int | None = None, local_kernel: int = 0) -> None:
        super().__init__()
        self.modalities, self.bands, self.patch_size, self.preset = list(modalities), list(bands), patch_size, preset
        self.window_size = dense.check_window_size(window_size) if window_size is not None else None
        self.backbone = build_backbone(preset, None, False)
        width = self.backbone.width
        # the dense path's local convolution trains with the tokenizer and is saved with it, so the classifier starts from it
        self.projection = ModalityProjection(self.modalities, self.bands, patch_size, width, "zero", self.window_size,
                                             local_kernel)
        self.decoders = nn.ModuleDict({m: nn.Linear(width, c) for m, c in zip(self.modalities, self.bands)})

    @property
    def untrained_tokenizer_weights(self) -> set[str]:
        """Tokenizer weights the chosen path never trains (and :func:`save_pretrained` leaves out)."""
        return {"position"} if self.window_size is not None else set()

    def forward(self, inputs: dict[str, Tensor], visible: Tensor) -> dict[str, Tensor]:
        """Reconstructions (B, C_m, P, P) of every modality, from the tokens where ``visible`` (B, M, P, P) is true."""
        batch, count, p = visible.shape[0], len(self.modalities), self.patch_size
        everything = torch.ones((batch, count), dtype=torch.bool, device=visible.device)
        tokens = self.projection(inputs, everything)
        keep = visible.flatten(2).flatten(1).unsqueeze(-1)  # (B, M*P*P, 1), modality-major as the tokens
        out = self.backbone(torch.where(keep, tokens, tokens.new_zeros(())))
        return {
            m: self.decoders[m](out[:, part]).transpose(1, 2).reshape(batch, -1, p, p)
            for m, part in zip(self.modalities, self.projection.modality_slices())
        }

    def forward_dense(self, inputs: dict[str, Tensor], visible: Tensor, origin: Tensor | None = None) -> dict[str, Tensor]:
        """Reconstructions (B, C_m, H, W) of every pixel of crops (B, C_m, H, W) starting at scene ``origin`` (B, 2).

        ``visible`` (B, M, H, W) says which tokens the model sees; the others
        are the missing (zero) token, as on the dense classifier's path.
        """
        if self.window_size is None:
            raise ValueError("forward_dense needs a MaskedPixelModel built with window_size (the dense path)")
        b, _, h, w = visible.shape
        canvas = dense.plan_canvas(origin, b, h, w, self.window_size)
        x = self.backbone.ln_pre(self.projection.dense(inputs, visible, canvas))  # (B, Hc, Wc, M, width)
        x = dense.run_windowed_blocks(x, None, canvas, 0, self.window_size, self.backbone.blocks,
                                      lambda _index, block, seq, _context: block(seq), lambda _pattern: None,
                                      self.dense_chunk_tokens)
        x = self.backbone.ln_post(dense.crop(x, canvas))  # (B, H, W, M, width)
        return {m: self.decoders[m](x[:, :, :, i]).permute(0, 3, 1, 2) for i, m in enumerate(self.modalities)}


def region_masks(batch: int, size: int, generator: torch.Generator) -> Tensor:
    """Bool (B, P, P): per sample a blob (a disc), a strip (rows or columns, maybe slanted) or the whole crop."""
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij")
    kind = torch.randint(0, 3, (batch,), generator=generator)
    centre = torch.rand((batch, 2), generator=generator) * size
    radius = 1.0 + torch.rand(batch, generator=generator) * size / 2
    blob = (yy - centre[:, 0, None, None]) ** 2 + (xx - centre[:, 1, None, None]) ** 2 <= radius[:, None, None] ** 2
    slant = (torch.rand(batch, generator=generator) - 0.5)[:, None, None]
    across = torch.where((torch.rand(batch, generator=generator) < 0.5)[:, None, None], xx + slant * yy, yy + slant * xx)
    width = 1.0 + torch.rand(batch, generator=generator) * size / 2
    strip = (across >= centre[:, 0, None, None] - width[:, None, None] / 2) & (across < centre[:, 0, None, None] + width[:, None, None] / 2)
    whole = torch.ones((batch, size, size), dtype=torch.bool)
    return torch.where((kind == 0)[:, None, None], blob, torch.where((kind == 1)[:, None, None], strip, whole))


def mask_tokens(present: Tensor, generator: torch.Generator, token_rate: float = 0.25, region_rate: float = 0.6) -> Tensor:
    """Which tokens stay visible: bool (B, M, P, P), a subset of ``present`` (pixels with data).

    Each token is hidden with ``token_rate``; with ``region_rate`` a sample also
    loses one random modality inside a region (:func:`region_masks`). At least one
    present token of the crop stays visible. Draws come from ``generator`` (CPU).
    """
    batch, count, size, _ = present.shape
    hidden = torch.rand(present.shape, generator=generator) < token_rate
    which = torch.randint(0, count, (batch,), generator=generator)
    region = region_masks(batch, size, generator) & (torch.rand(batch, generator=generator) < region_rate)[:, None, None]
    hidden |= nn.functional.one_hot(which, count).bool()[:, :, None, None] & region[:, None]
    visible = present.cpu() & ~hidden
    empty = ~visible.flatten(1).any(dim=1)
    visible[empty] = present.cpu()[empty]
    return visible.to(present.device)


def reconstruction_loss(outputs: dict[str, Tensor], inputs: dict[str, Tensor], target: Tensor) -> Tensor:
    """Mean squared error over the ``target`` tokens (B, M, P, P), averaged per modality that has any."""
    terms = []
    for i, (name, predicted) in enumerate(outputs.items()):
        where = target[:, i]
        if bool(where.any()):
            error = (predicted.float() - inputs[name].float()).pow(2).mean(dim=1)  # (B, P, P)
            terms.append(error[where].mean())
    return torch.stack(terms).mean() if terms else next(iter(outputs.values())).new_zeros(()).float()


# ----------------------------------------------------------------------------- the file


def save_pretrained(model: MaskedPixelModel, path: str | os.PathLike[str], metadata: dict[str, Any]) -> None:
    """Backbone and tokenizer weights with ``metadata`` (JSON values) into one safetensors file at ``path``."""
    tensors = {f"backbone.{k}": v.detach().cpu().contiguous() for k, v in model.backbone.state_dict().items()}
    tensors.update({f"projection.{k}": v.detach().cpu().contiguous() for k, v in model.projection.state_dict().items()
                    if k not in model.untrained_tokenizer_weights})
    info = {"format": PRETRAINED_FORMAT, "preset": model.preset, "modalities": model.modalities, "bands": model.bands,
            "patch_size": model.patch_size, "window_size": model.window_size,
            "local_kernel": model.projection.local_kernel, **metadata}
    save_file(tensors, str(path), metadata={"pretrained": json.dumps(info)})


def pretrained_info(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The metadata of a pretrained-backbone file, or None when ``path`` is not one (a CLIP file, a tag)."""
    file = Path(path)
    if file.suffix != ".safetensors" or not file.is_file():
        return None
    try:
        with safe_open(str(file), framework="pt") as handle:
            meta = handle.metadata() or {}
    except Exception:  # not a safetensors file at all: the CLIP loader reports it
        return None
    info = json.loads(meta["pretrained"]) if "pretrained" in meta else None
    return info if info and info.get("format") == PRETRAINED_FORMAT else None


def is_pretrained_backbone(path: str | os.PathLike[str] | None) -> bool:
    """Whether ``path`` is a file written by :func:`save_pretrained`."""
    return path is not None and pretrained_info(path) is not None


def _tensors(path: str | os.PathLike[str], prefix: str) -> dict[str, Tensor]:
    with safe_open(str(path), framework="pt") as handle:
        return {k[len(prefix):]: handle.get_tensor(k) for k in handle.keys() if k.startswith(prefix)}  # noqa: SIM118


def load_pretrained_backbone(backbone: Backbone, path: str | os.PathLike[str]) -> None:
    """Copy a pretrained file's backbone into ``backbone`` (same preset, every weight)."""
    info = pretrained_info(path)
    if info is None:
        raise ValueError(f"{path} is not a pretrained backbone file ({PRETRAINED_FORMAT})")
    if info["preset"] != backbone.preset:
        raise ValueError(f"{path} holds a {info['preset']!r} backbone; the model asks for {backbone.preset!r} (model.backbone)")
    backbone.load_state_dict(_tensors(path, "backbone."))


def load_pretrained_tokenizer(projection: ModalityProjection, path: str | os.PathLike[str]) -> list[str]:
    """Copy the pretrained tokenizer's weights whose names and shapes match into ``projection``; returns their names.

    Modalities, band counts or patch sizes that differ keep their own initialisation.
    """
    own = projection.state_dict()
    matching = {k: v for k, v in _tensors(path, "projection.").items() if k in own and own[k].shape == v.shape}
    projection.load_state_dict(matching, strict=False)
    return sorted(matching)


def init_from_pretrained(model: nn.Module) -> list[str]:
    """Start a freshly built model's tokenizer from its pretrained file (``model.config.pretrained``), where it has one.

    The backbone itself is loaded by ``models.backbone.build_backbone``; the
    tokenizer (band maps, position and modality embeddings) trains on, from
    the pretrained values. Returns the names of the weights copied.
    """
    config = getattr(model, "config", None)
    projection = getattr(model, "projection", None)
    path = getattr(config, "pretrained", None)
    if path is None or not is_pretrained_backbone(path) or not isinstance(projection, ModalityProjection):
        return []
    return load_pretrained_tokenizer(projection, path)
