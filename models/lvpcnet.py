"""LVPCnet: Language-Guided Visual Prompt Compensation ("Language-Guided Visual Prompt
Compensation for Multi-Modal Remote Sensing Image Classification with Modality Absence").

Each modality's patch becomes P*P tokens (``models.projection``). A shared
encoder (one for all modalities) and a specific encoder per modality, each a
stack of ``encoder_layers`` open_clip blocks at the backbone preset's width,
turn a modality's tokens into a shared and a specific feature (mean of the
output tokens). The head sees ``[mean of the shared features of the available
modalities, specific feature of every modality]`` (B, (1+M)*width).

Language features (``models.text``): per class a shared sentence and one per
modality kind (HS colour and material, LiDAR height, SAR backscatter and
roughness), from the catalog's ``classes[].description`` or templates,
encoded once by open_clip's text encoder and kept as buffers (``text_shared``
(K, D) and ``text_specific`` (M, K, D)), so a checkpoint holds them and
loading one never builds the text tower.

Two training stages (:meth:`stages`):

``align``: the tokenizers, the encoders, the heads and the visual-to-text
    projections train. Loss: cross-entropy (on every sample, see ``align_ce``), plus
    ``align_weight`` times the class-level supervised contrastive loss of the
    shared features with the shared sentences and of each modality's specific
    features with its own sentences, over the samples where the modality is
    available. The contrastive loss is symmetric: each pixel against the K
    class texts (its class positive), and each class text present in the batch
    against the batch's pixels (all pixels of the class positive).
``prompt``: only the compensation trains, everything else is frozen. For a
    missing modality m, a conv per available modality j maps j's patch to m's
    channel count (the mean over the available j), and m's specific encoder
    runs on it with deep visual prompts (``prompt_length`` learnable tokens
    put before the tokens of each of the first ``prompt_depth`` blocks). The
    trainer's availability drops one modality of every sample with two or
    more; the loss is cross-entropy plus ``align_weight`` times the
    contrastive loss of the compensated specific features with the missing
    modality's sentences.

At inference a missing modality's specific feature is the compensated one;
the shared feature averages the available modalities only.

The dense path (``models.dense``, :meth:`LVPCNet.dense_outputs`): each encoder
runs on one modality's pixel tokens in W x W windows (shifted in odd blocks),
a pixel's shared and specific features are the outputs averaged over its
P x P neighbourhood, and a pixel missing a modality gets the specific feature
of the prompted encoder on that modality compensated from the others (their
crops through the compensation convolutions, tokenised as it). The prompts
enter every window of each prompted block and leave after it (deep VPT per
window; with ``prompt_depth`` below ``encoder_layers`` the patch path carries
the last prompts' outputs through the remaining blocks, the dense path does not).

``config.params``:
    encoder_layers: blocks per encoder (default 4; at most the preset's depth).
    prompt_length: prompt tokens per prompted block (default 4).
    prompt_depth: prompted blocks, from the first (default 4; at most ``encoder_layers``).
    conv_kernel: kernel side of the compensation convs (default 3).
    temperature: of the contrastive loss (default 0.07).
    align_weight: weight of the contrastive loss (default 1.0).
    text_preset: text encoder, ``ViT-B-16`` or ``tiny`` (default: ``ViT-B-16``
        with CLIP weights, else ``tiny``, random, with a warning).
    text_pretrained: CLIP weights for the text encoder (default ``model.pretrained``).
    text_seed: seed of a random text encoder, or of the class codes (default 0).
    untrained_text: what stands for language without CLIP text weights:
        ``codes`` (default): seeded orthonormal class codes, one set for the
        shared sentences and one per modality; ``encoder``: a randomly
        initialised text tower (before 2026-12 the only choice). A random tower
        maps every sentence of a class table to nearly the same direction
        (cosine 0.8-0.97 between classes), so the contrastive loss at
        temperature 0.07 pulls all classes together and some seeds collapsed
        (61 % OA where the baseline had 93 %); orthonormal codes carry the only
        thing such features can carry, the class identity, without that pull.
    align_ce: the samples stage ``align``'s cross-entropy sees: ``all`` (default: every
        sample, a missing modality's specific feature zero, as ``features(compensate=False)``
        gives it) or ``complete`` (the complete ones only, as with the paper's complete
        training set). Under a protocol that leaves only 10-30 % of the training pixels
        complete, ``complete`` trained the head on a few labels per class, and LVPCnet fell
        4-11 points below the baseline where it was most often missing (MUUFL benchmark).
    prompt_trains_head: the head trains in stage ``prompt`` too (default False: the paper
        trains only the convs and prompts there). Stage ``align`` taught the head a missing
        modality's specific feature as zero; this lets it follow the compensated one.
    freeze_backbone: keep the encoders (copies of the pretrained backbone's first
        blocks) frozen; default True when ``config.pretrained`` is set: then
        the tokenizer, heads, text projections, prompts and convs train.
    quick_gelu: force the blocks' activation (default: from the weights).
    window_size, local_kernel: the dense path's windows and token convolution, as in ``models.classifier``.
"""

from __future__ import annotations

import copy
import logging
from typing import Any, NamedTuple, cast

import torch
from torch import Tensor, nn

from models import dense
from models.backbone import (
    CLIP_MODEL,
    Backbone,
    build_backbone,
    pretrained_weights_skipped,
)
from models.base import MissingModalityClassifier, ModelConfig, freezes_backbone
from models.classifier import resolve_params
from models.pretraining import is_pretrained_backbone
from models.projection import LOCAL_KERNEL, ModalityProjection, zero_where_missing
from models.registry import register
from models.text import class_texts, encode_texts, text_feature_dim

log = logging.getLogger(__name__)

STAGES = ("align", "prompt")

LVPCNET_PARAMS: dict[str, Any] = {
    "encoder_layers": 4,
    "prompt_length": 4,
    "prompt_depth": 4,
    "conv_kernel": 3,
    "temperature": 0.07,
    "align_weight": 1.0,
    "text_preset": None,
    "text_pretrained": None,
    "text_seed": 0,
    "untrained_text": "codes",
    "freeze_backbone": None,
    "align_ce": "all",
    "prompt_trains_head": False,
    "quick_gelu": None,
    "window_size": 2,
    "local_kernel": 5,
}


class PromptedEncoder(nn.Module):
    """``ln_pre``, open_clip blocks, ``ln_post``; the mean of the output tokens, with optional deep prompts."""

    def __init__(self, backbone: Backbone, layers: int) -> None:
        super().__init__()
        self.ln_pre = copy.deepcopy(backbone.ln_pre)
        self.blocks = nn.ModuleList(copy.deepcopy(block) for block in backbone.blocks[:layers])
        self.ln_post = copy.deepcopy(backbone.ln_post)

    def forward(self, tokens: Tensor, prompts: Tensor | None = None) -> Tensor:
        """(B, N, width) tokens -> (B, width). ``prompts`` (depth, length, width) replace the prompt
        tokens before each of the first ``depth`` blocks (deep VPT); they are dropped before pooling."""
        x = self.ln_pre(tokens)
        skip = 0
        for depth, block in enumerate(self.blocks):
            if prompts is not None and depth < prompts.shape[0]:
                prompt = prompts[depth].to(x.dtype).expand(x.shape[0], -1, -1)
                x = torch.cat([prompt, x[:, skip:]], dim=1)
                skip = prompts.shape[1]
            x = block(x)
        return self.ln_post(x[:, skip:]).mean(dim=1)


class LVPCFeatures(NamedTuple):
    """One forward pass: logits (B, K); shared (M, B, width) and specific (B, M, width) features,
    float32, zero where not computed; compensated (B, M): where the specific feature is the prompted one."""

    logits: Tensor
    shared: Tensor
    specific: Tensor
    compensated: Tensor


class DenseLVPCFeatures(NamedTuple):
    """One dense forward pass over crops, per pixel of the crops' interior (H', W'): logits (B, K, H', W'); shared
    (M, B, H', W', width) and specific (B, M, H', W', width) features, each a mean over the pixel's P x P neighbourhood,
    float32; compensated (B, M, H', W'): where the specific feature is the prompted one; available (B, M, H', W')."""

    logits: Tensor
    shared: Tensor
    specific: Tensor
    compensated: Tensor
    available: Tensor


@register("lvpcnet")
class LVPCNet(MissingModalityClassifier):
    """Shared and specific encoders aligned with class language features; prompt compensation of missing modalities."""

    default_params = LVPCNET_PARAMS
    supports_dense = True
    param_rules = {"window_size": dense.WINDOW_SIZE, "local_kernel": LOCAL_KERNEL}
    dense_chunk_tokens: int = 8192
    """Tokens per call of a block on the dense path (whole windows); a speed knob only: results do not depend on it."""
    # buffers and containers, typed for the checker (nn.Module's attribute lookup is untyped)
    text_shared: Tensor
    text_specific: Tensor
    specific: nn.ModuleDict
    specific_to_text: nn.ModuleDict
    convs: nn.ModuleDict

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        p = self.params = resolve_params(config, self.default_params)
        if len(config.modalities) < 2:
            raise ValueError(f"LVPCnet compensates a missing modality from the others: it needs two or more, got {config.modalities}")
        backbone = build_backbone(config.backbone, config.pretrained, p["quick_gelu"])
        width, layers = backbone.width, min(int(p["encoder_layers"]), backbone.layers)
        if layers < 1:
            raise ValueError(f"encoder_layers must be >= 1, got {p['encoder_layers']}")
        depth, length = min(int(p["prompt_depth"]), layers), int(p["prompt_length"])
        if depth < 1 or length < 1:
            raise ValueError(f"prompt_depth and prompt_length must be >= 1, got {p['prompt_depth']} and {length}")
        if p["align_ce"] not in ("complete", "all"):
            raise ValueError(f"align_ce must be 'complete' or 'all', got {p['align_ce']!r}")
        names = list(config.modalities)
        self.width = width
        self.window_size = dense.check_window_size(int(p["window_size"]))
        self.projection = ModalityProjection(names, config.bands, config.patch_size, width, "zero", self.window_size,
                                             int(p["local_kernel"]))
        self.shared = PromptedEncoder(backbone, layers)
        self.specific = nn.ModuleDict({name: PromptedEncoder(backbone, layers) for name in names})
        self.head = nn.Linear((1 + len(names)) * width, config.num_classes)

        text_preset, text_weights = self._text_source()
        text_dim = text_feature_dim(text_preset)
        self.shared_to_text = nn.Linear(width, text_dim)
        self.specific_to_text = nn.ModuleDict({name: nn.Linear(width, text_dim) for name in names})
        self.register_buffer("text_shared", torch.zeros(config.num_classes, text_dim))
        self.register_buffer("text_specific", torch.zeros(len(names), config.num_classes, text_dim))
        if not pretrained_weights_skipped():  # a checkpoint brings the features
            self._encode_class_texts(text_preset, text_weights)

        kernel = int(p["conv_kernel"])
        self.convs = nn.ModuleDict(
            {
                target: nn.ModuleDict(
                    {source: nn.Conv2d(c_source, c_target, kernel, padding=kernel // 2)
                     for source, c_source in zip(names, config.bands) if source != target}
                )
                for target, c_target in zip(names, config.bands)
            }
        )
        self.prompts = nn.ParameterDict({name: nn.Parameter(width**-0.5 * torch.randn(depth, length, width)) for name in names})
        self.current_stage = STAGES[0]
        freeze = p["freeze_backbone"]
        self.backbone_frozen = freezes_backbone(config.pretrained is not None, freeze)

    # -- language features -------------------------------------------------------
    def _text_source(self) -> tuple[str, str | None]:
        p, pretrained = self.params, self.config.pretrained
        if is_pretrained_backbone(pretrained):
            pretrained = None  # a backbone of pipeline.pretrain has no text tower
        weights = p["text_pretrained"]
        preset = p["text_preset"] or (CLIP_MODEL if (weights or pretrained) else "tiny")
        if weights is None and preset == CLIP_MODEL:
            weights = pretrained
        return preset, None if weights is None else str(weights)

    def _encode_class_texts(self, preset: str, weights: str | None) -> None:
        cfg = self.config
        names = cfg.class_names or [f"class {k}" for k in range(cfg.num_classes)]
        if len(names) != cfg.num_classes:
            raise ValueError(f"{len(names)} class names for {cfg.num_classes} classes")
        kinds = cfg.kinds or list(cfg.modalities)
        k = cfg.num_classes
        if weights is None and self.params["untrained_text"] == "codes":
            codes = orthonormal_class_codes(1 + len(cfg.modalities), k, text_feature_dim(preset), int(self.params["text_seed"]))
            self.text_shared.copy_(codes[0])
            self.text_specific.copy_(codes[1:])
            return
        if self.params["untrained_text"] not in ("codes", "encoder"):
            raise ValueError(f"untrained_text must be 'codes' or 'encoder', got {self.params['untrained_text']!r}")
        texts = class_texts(names, kinds, cfg.class_descriptions)
        sentences = texts.shared + [s for per_kind in texts.per_modality for s in per_kind]
        features = encode_texts(sentences, preset, weights, self.params["quick_gelu"], int(self.params["text_seed"]))
        self.text_shared.copy_(features[:k])
        self.text_specific.copy_(features[k:].view(len(cfg.modalities), k, -1))

    # -- inference ------------------------------------------------------------------
    def forward(self, inputs: dict[str, Tensor], available: Tensor) -> Tensor:
        return self.features(inputs, available).logits

    def features(self, inputs: dict[str, Tensor], available: Tensor, compensate: bool = True) -> LVPCFeatures:
        """Logits and the features the losses need; ``compensate=False`` leaves missing specific features zero."""
        self.check_inputs(inputs, available)
        names = self.config.modalities
        inputs = {name: zero_where_missing(inputs[name], available[:, i]) for i, name in enumerate(names)}
        tokens = self.projection(inputs, available)
        groups = [tokens[:, part] for part in self.projection.modality_slices()]
        batch = available.shape[0]
        shared, specific = [], []
        for i, name in enumerate(names):
            present = available[:, i].nonzero(as_tuple=True)[0]
            shared.append(self._rows(self.shared, groups[i], present, batch))
            own = self._rows(cast(PromptedEncoder, self.specific[name]), groups[i], present, batch)
            absent = (~available[:, i]).nonzero(as_tuple=True)[0]
            if compensate and absent.numel():
                own = own.index_copy(0, absent, self.compensate(i, inputs, available, absent).float())
            specific.append(own)
        shared_t = torch.stack(shared)  # (M, B, width)
        weights = available.T.float().unsqueeze(-1)
        shared_mean = (shared_t * weights).sum(dim=0) / weights.sum(dim=0).clamp(min=1.0)
        specific_t = torch.stack(specific, dim=1)  # (B, M, width)
        logits = self.head(torch.cat([shared_mean, specific_t.flatten(1)], dim=-1))
        compensated = ~available if compensate else torch.zeros_like(available)
        return LVPCFeatures(logits, shared_t, specific_t, compensated)

    def _rows(self, encoder: PromptedEncoder, tokens: Tensor, rows: Tensor, batch: int) -> Tensor:
        """``encoder`` on the rows ``rows`` of ``tokens``; (batch, width) float32, zeros elsewhere."""
        out = tokens.new_zeros((batch, self.width), dtype=torch.float32)
        if rows.numel() == 0:
            return out
        return out.index_copy(0, rows, encoder(tokens.index_select(0, rows)).float())

    def compensate(self, target: int, inputs: dict[str, Tensor], available: Tensor, rows: Tensor) -> Tensor:
        """Specific features (len(rows), width) of the missing modality ``target`` on ``rows``.

        Each available modality's patch is mapped by its conv to the target's
        bands (mean over the available ones), tokenised as the target, and the
        target's specific encoder runs on it with the target's prompts.
        """
        names = self.config.modalities
        name = names[target]
        avail = available.index_select(0, rows)
        mapped, count = None, avail.new_zeros(rows.shape[0], dtype=torch.float32)
        for j, source in enumerate(names):
            if j == target:
                continue
            present = avail[:, j]
            out = zero_where_missing(cast(nn.ModuleDict, self.convs[name])[source](inputs[source].index_select(0, rows)), present)
            mapped = out if mapped is None else mapped + out
            count = count + present.float()
        assert mapped is not None
        mapped = mapped / count.clamp(min=1.0).view(-1, 1, 1, 1).to(mapped.dtype)
        proj = self.projection
        tokens = proj.band_maps[name](mapped.flatten(2).transpose(1, 2)) + proj.position + proj.modality[target]
        return self.specific[name](tokens, self.prompts[name])

    # -- dense path (models.dense) ------------------------------------------------------
    @property
    def readout_radius(self) -> int:
        """Pixels each dense feature averages over on each side: a patch's tokens, P // 2."""
        return self.config.patch_size // 2

    @property
    def receptive_radius(self) -> int:
        """Pixels around a pixel that its dense logits can depend on: the encoders' windows, the readout, the token
        embedding's local convolution and the compensation convolutions."""
        blocks = dense.receptive_radius(len(self.shared.blocks), self.window_size)
        return blocks + self.readout_radius + self.projection.local_kernel // 2 + int(self.params["conv_kernel"]) // 2

    def forward_dense(self, inputs: dict[str, Tensor], available: Tensor, origin: Tensor | None = None,
                      margin: int = 0) -> Tensor:
        """Logits (B, K, H - 2 margin, W - 2 margin) for the pixels of crops (B, C_m, H, W); see ``models.dense``."""
        return self.dense_outputs(inputs, available, origin, margin).logits

    def dense_outputs(self, inputs: dict[str, Tensor], available: Tensor, origin: Tensor | None = None, margin: int = 0,
                      compensate: bool = True) -> DenseLVPCFeatures:
        """The dense path's :meth:`features`: every encoder runs on one modality's canvas tokens in windows.

        A pixel's shared and specific features are its encoders' outputs averaged over its P x P
        neighbourhood (a patch's tokens, ``patch_mean``); the head reads them as on the patch path, the
        shared ones averaged over the modalities the pixel has. Where the pixel misses a modality (and
        ``compensate``), its specific feature is that of the prompted specific encoder on the modality
        compensated from the others: their crops through the compensation convolutions, tokenised as it.
        """
        self.check_dense_inputs(inputs, available)
        b, _, h, w = available.shape
        dense.check_margin(margin, h, w)
        k = self.readout_radius
        inner = max(0, margin - k)  # the readout reads k pixels past each wanted one
        canvas = dense.plan_canvas(origin, b, h, w, self.window_size)
        names = self.config.modalities
        inputs = {name: torch.where(available[:, i : i + 1], inputs[name], torch.zeros((), dtype=inputs[name].dtype))
                  for i, name in enumerate(names)}
        tokens = self.projection.dense(inputs, available, canvas)  # (B, Hc, Wc, M, width)
        cut = margin - inner
        shared, specific, compensated = [], [], []
        here = available[:, :, margin : h - margin, margin : w - margin]
        for i, name in enumerate(names):
            encoder = cast(PromptedEncoder, self.specific[name])
            shared.append(self._pooled(self._encode_dense(self.shared, tokens[:, :, :, i], canvas, inner), cut))
            own = self._pooled(self._encode_dense(encoder, tokens[:, :, :, i], canvas, inner), cut)
            replaced = ~here[:, i] & here.any(dim=1) if compensate else torch.zeros_like(here[:, i])
            if bool(replaced.any()):
                mapped = self._compensated_tokens(i, inputs, available, canvas)
                prompted = self._pooled(self._encode_dense(encoder, mapped, canvas, inner, self.prompts[name]), cut)
                own = torch.where(replaced[..., None], prompted, own)
            specific.append(own)
            compensated.append(replaced)
        shared_t = torch.stack(shared)  # (M, B, H', W', width)
        weights = here.permute(1, 0, 2, 3).float().unsqueeze(-1)
        shared_mean = (shared_t * weights).sum(dim=0) / weights.sum(dim=0).clamp(min=1.0)
        specific_t = torch.stack(specific, dim=1)  # (B, M, H', W', width)
        features = torch.cat([shared_mean, specific_t.permute(0, 2, 3, 1, 4).flatten(3)], dim=-1)
        logits = self.head(features).permute(0, 3, 1, 2)
        return DenseLVPCFeatures(logits, shared_t, specific_t, torch.stack(compensated, dim=1), here)

    def _pooled(self, features: Tensor, cut: int) -> Tensor:
        """Features (B, H, W, width) averaged over each pixel's P x P neighbourhood inside the crop, ``cut`` px trimmed."""
        x = dense.neighbourhood_mean(features.float().permute(0, 3, 1, 2), self.readout_radius)
        h, w = x.shape[-2:]
        return x[:, :, cut : h - cut, cut : w - cut].permute(0, 2, 3, 1)

    def _encode_dense(self, encoder: PromptedEncoder, tokens: Tensor, canvas: dense.Canvas, margin: int,
                      prompts: Tensor | None = None) -> Tensor:
        """Per-pixel outputs (B, H - 2 margin, W - 2 margin, width) of ``encoder`` on one modality's canvas tokens
        (B, Hc, Wc, width), its blocks on windows (shifted in odd blocks). With ``prompts`` (depth, length, width),
        each of the first ``depth`` blocks sees the prompt tokens before each window's tokens (deep VPT, per
        window) and passes on the window's tokens only."""
        x = encoder.ln_pre(tokens).unsqueeze(3)  # (B, Hc, Wc, 1, width)

        def run_block(index: int, block: nn.Module, seq: Tensor, _context: Any) -> Tensor:
            if prompts is None or index >= prompts.shape[0]:
                return cast(Tensor, block(seq))
            prompt = prompts[index].to(seq.dtype).expand(seq.shape[0], -1, -1)
            return cast(Tensor, block(torch.cat([prompt, seq], dim=1)))[:, prompts.shape[1] :]

        x = dense.run_windowed_blocks(x, None, canvas, margin, self.window_size, encoder.blocks, run_block,
                                      lambda _pattern: None, self.dense_chunk_tokens)
        x = dense.crop(x, canvas)[:, :, :, 0]  # (B, H, W, width)
        h, w = x.shape[1:3]
        if margin:
            x = x[:, margin : h - margin, margin : w - margin]
        return cast(Tensor, encoder.ln_post(x))

    def _compensated_tokens(self, target: int, inputs: dict[str, Tensor], available: Tensor, canvas: dense.Canvas) -> Tensor:
        """Canvas tokens (B, Hc, Wc, width) of modality ``target`` compensated from the others, at every pixel with one.

        Each other modality's crop (zero where missing) through its compensation convolution, the mean
        over those the pixel has, tokenised as ``target`` (as :meth:`compensate` does a patch).
        """
        names = self.config.modalities
        name = names[target]
        mapped: Tensor | None = None
        count = torch.zeros_like(available[:, :1], dtype=torch.float32)
        for j, source in enumerate(names):
            if j == target:
                continue
            present = available[:, j : j + 1]
            out = cast(nn.ModuleDict, self.convs[name])[source](inputs[source])
            out = torch.where(present, out, torch.zeros((), dtype=out.dtype))
            mapped = out if mapped is None else mapped + out
            count = count + present.float()
        assert mapped is not None
        mapped = mapped / count.clamp(min=1.0).to(mapped.dtype)
        return self.projection.dense_modality(target, mapped, count > 0, canvas)

    def dense_training_patterns(self, patterns: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Stage ``prompt`` drops one modality of every region with two or more, as :meth:`training_availability`
        does a sample; stage ``align`` keeps the protocol's patterns."""
        return self.training_availability(patterns, generator)

    def dense_training_loss(self, inputs: dict[str, Tensor], available: Tensor, real: Tensor, targets: Tensor,
                            origin: Tensor | None, margin: int, stage: str) -> dict[str, Tensor]:
        """:meth:`training_loss` over the labelled pixels of dense crops (``targets`` -1 elsewhere)."""
        if stage not in STAGES:
            raise ValueError(f"unknown training stage {stage!r}; LVPCnet has stages {list(STAGES)}")
        out = self.dense_outputs(inputs, available, origin, margin, compensate=stage == "prompt")
        labelled = targets >= 0  # (B, H', W')
        logits = out.logits.permute(0, 2, 3, 1)[labelled]
        here = out.available.permute(0, 2, 3, 1)[labelled]  # (N, M)
        shared = out.shared.permute(1, 2, 3, 0, 4)[labelled]  # (N, M, width)
        specific = out.specific.permute(0, 2, 3, 1, 4)[labelled]
        compensated = out.compensated.permute(0, 2, 3, 1)[labelled]
        return self._losses(logits, targets[labelled], here, shared.transpose(0, 1), specific, compensated, stage)

    # -- training hooks ------------------------------------------------------------
    def stages(self) -> list[str]:
        return list(STAGES)

    def compensation_parameters(self) -> list[nn.Parameter]:
        """What stage ``prompt`` trains: the deep prompts and the compensation convs."""
        return list(self.prompts.parameters()) + list(self.convs.parameters())

    def configure_stage(self, stage: str) -> list[nn.Parameter]:
        if stage not in STAGES:
            raise ValueError(f"unknown training stage {stage!r}; LVPCnet has stages {list(STAGES)}")
        self.current_stage = stage
        compensation = {id(p) for p in self.compensation_parameters()}
        if stage == "prompt":
            head = {id(p) for p in self.head.parameters()} if self.params["prompt_trains_head"] else set()
            trained = compensation | head
        else:
            trained = {id(p) for p in self.parameters()} - compensation
        for param in self.parameters():
            param.requires_grad_(id(param) in trained)
        if self.backbone_frozen:  # a pretrained backbone: its copies stay as they are, as in the paper
            for encoder in (self.shared, *self.specific.values()):
                encoder.requires_grad_(False)
        return [p for p in self.parameters() if p.requires_grad]

    def training_availability(self, available: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """``align``: the batch as it is. ``prompt``: one available modality dropped from every sample with two or more."""
        if self.current_stage != "prompt":
            return available
        scores = torch.rand(available.shape, generator=generator, device=generator.device if generator is not None else available.device)
        scores = scores.to(available.device).masked_fill(~available, -1.0)
        drop = nn.functional.one_hot(scores.argmax(dim=1), available.shape[1]).bool()
        several = available.sum(dim=1, keepdim=True) >= 2
        return available & ~(drop & several)

    def training_loss(self, inputs: dict[str, Tensor], available: Tensor, targets: Tensor, stage: str) -> dict[str, Tensor]:
        if stage not in STAGES:
            raise ValueError(f"unknown training stage {stage!r}; LVPCnet has stages {list(STAGES)}")
        out = self.features(inputs, available, compensate=stage == "prompt")
        return self._losses(out.logits, targets, available, out.shared, out.specific, out.compensated, stage)

    def _losses(self, logits: Tensor, targets: Tensor, available: Tensor, shared: Tensor, specific: Tensor,
                compensated: Tensor, stage: str) -> dict[str, Tensor]:
        """Cross-entropy and the class-text contrastive losses of ``stage``, on N samples: ``logits`` (N, K),
        ``available`` and ``compensated`` (N, M), ``shared`` (M, N, width), ``specific`` (N, M, width)."""
        temperature = float(self.params["temperature"])
        align_terms: list[Tensor] = []
        if stage == "align":
            labelled = available.all(dim=1) if self.params["align_ce"] == "complete" else available.any(dim=1)
            ce = (
                nn.functional.cross_entropy(logits[labelled], targets[labelled])
                if bool(labelled.any()) else logits.new_zeros((), dtype=torch.float32)
            )
            for i, name in enumerate(self.config.modalities):
                rows = available[:, i]
                if bool(rows.any()):
                    shared_text = self.shared_to_text(shared[i][rows])
                    own = self.specific_to_text[name](specific[rows, i])
                    align_terms.append(class_text_contrastive(shared_text, self.text_shared, targets[rows], temperature))
                    align_terms.append(class_text_contrastive(own, self.text_specific[i], targets[rows], temperature))
        else:
            ce = nn.functional.cross_entropy(logits, targets)
            for i, name in enumerate(self.config.modalities):
                rows = compensated[:, i]
                if bool(rows.any()):
                    own = self.specific_to_text[name](specific[rows, i])
                    align_terms.append(class_text_contrastive(own, self.text_specific[i], targets[rows], temperature))
        align = torch.stack(align_terms).mean() if align_terms else ce.new_zeros(())
        loss = ce.float() + float(self.params["align_weight"]) * align
        return {"loss": loss, "ce": ce.detach(), "align": align.detach()}


def orthonormal_class_codes(sets: int, classes: int, dim: int, seed: int) -> Tensor:
    """``sets`` tables of ``classes`` orthonormal vectors of length ``dim`` (sets, classes, dim), seeded, float32."""
    if classes > dim:
        raise ValueError(f"{classes} orthonormal class codes need a text width of at least {classes}, got {dim}")
    generator = torch.Generator().manual_seed(seed)
    gaussian = torch.randn((sets, dim, classes), generator=generator, dtype=torch.float64)
    q, _ = torch.linalg.qr(gaussian)  # (sets, dim, classes), orthonormal columns
    return q.transpose(1, 2).float().contiguous()


def class_text_contrastive(visual: Tensor, text: Tensor, targets: Tensor, temperature: float) -> Tensor:
    """Class-level supervised contrastive loss between pixel features (N, D) and class texts (K, D).

    Pixel to text: cross-entropy of each pixel over the K class texts, its own
    class positive. Text to pixel: for each class present in the batch, the
    mean over its pixels of -log softmax over the batch's pixels (all pixels of
    the class are positives of its text). The loss is the mean of the two.
    """
    v = nn.functional.normalize(visual.float(), dim=-1)
    t = nn.functional.normalize(text.float(), dim=-1)
    similarity = v @ t.T / temperature  # (N, K)
    pixel_to_text = nn.functional.cross_entropy(similarity, targets)
    log_p = similarity.log_softmax(dim=0)  # each class text over the pixels
    positives = nn.functional.one_hot(targets, text.shape[0]).float()
    per_class = positives.sum(dim=0)
    present = per_class > 0
    text_to_pixel = -((log_p * positives).sum(dim=0)[present] / per_class[present]).mean()
    return 0.5 * (pixel_to_text + text_to_pixel)
