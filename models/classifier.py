"""What MaMOL and the baseline share: projection -> backbone blocks -> per-modality features -> head.

Subclasses change what happens inside a block by overriding
:meth:`PatchTransformerClassifier.run_block`; everything else (token
projection, missing-token replacement, freezing, pooling, the head) is here.

Common ``config.params``:
    missing_tokens: ``"zero"`` (default, the paper) or ``"dummy"`` (learnable).
    freeze_backbone: default True when ``config.pretrained`` is set, else False
        (a backbone without pretrained weights has to learn).
    quick_gelu: force the blocks' activation (default: from the weights, see
        ``models.backbone.uses_quick_gelu``).
    window_size: side in pixels of the dense path's attention windows (even;
        default 2); only classes with ``supports_dense`` use it (see ``models.dense``).
    dense_readout: what the dense path's head reads at a pixel: ``"patch_mean"``
        (default) each modality's output tokens averaged over the P x P
        neighbourhood, as the patch path's head reads the mean of its patch's
        tokens; ``"pixel"`` the pixel's own tokens.
    local_kernel: 0 or an odd k (default 5): the dense path adds to each token a
        depthwise k x k convolution of its modality's tokens (``models.projection``).
        2 px windows with the 5 x 5 convolution are the geometry whose dense accuracy
        was measured against the patch path on every ``mamol-table1`` row (docs/accuracy.md).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from open_clip.transformer import ResidualAttentionBlock
from torch import Tensor, nn

from models import dense
from models.backbone import build_backbone
from models.base import MissingModalityClassifier, ModelConfig, freezes_backbone
from models.params import ParamRule
from models.projection import LOCAL_KERNEL, MISSING_TOKENS, ModalityProjection
from models.registry import available_methods, method_class

log = logging.getLogger(__name__)

COMMON_PARAMS: dict[str, Any] = {
    "missing_tokens": "zero", "freeze_backbone": None, "quick_gelu": None, "window_size": 2, "dense_readout": "patch_mean",
    "local_kernel": 5,
}
DENSE_READOUTS = ("patch_mean", "pixel")
DENSE_READOUT = ParamRule(lambda readout: readout in DENSE_READOUTS, f"one of {', '.join(DENSE_READOUTS)}")


class PatchTransformerClassifier(MissingModalityClassifier):
    """Tokens of every modality through the backbone; modality features concatenated into a linear head.

    A modality's feature is the mean of its P*P output tokens; the head sees
    the M features side by side (B, M*width).
    """

    default_params: dict[str, Any] = COMMON_PARAMS
    param_rules: dict[str, ParamRule] = {
        "missing_tokens": MISSING_TOKENS, "window_size": dense.WINDOW_SIZE, "local_kernel": LOCAL_KERNEL,
        "dense_readout": DENSE_READOUT,
    }

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.params = resolve_params(config, self.default_params)
        self.backbone = build_backbone(config.backbone, config.pretrained, self.params["quick_gelu"])
        width = self.backbone.width
        self.window_size = dense.check_window_size(int(self.params["window_size"])) if self.supports_dense else None
        self.projection = ModalityProjection(
            config.modalities, config.bands, config.patch_size, width, self.params["missing_tokens"], self.window_size,
            int(self.params["local_kernel"]) if self.supports_dense else 0,
        )
        self.head = nn.Linear(len(config.modalities) * width, config.num_classes)
        self.dense_readout = str(DENSE_READOUT.check("dense_readout", self.params["dense_readout"]))
        freeze = self.params["freeze_backbone"]
        self.backbone_frozen = freezes_backbone(config.pretrained is not None, freeze)
        self.backbone.requires_grad_(not self.backbone_frozen)

    def forward(self, inputs: dict[str, Tensor], available: Tensor) -> Tensor:
        self.check_inputs(inputs, available)
        return self.classify_tokens(self.tokens(inputs, available), available)

    def tokens(self, inputs: dict[str, Tensor], available: Tensor) -> Tensor:
        """Tokens (B, M*P*P, width) entering the backbone; methods that rebuild missing tokens override this."""
        return self.projection(inputs, available)

    def classify_tokens(self, tokens: Tensor, available: Tensor) -> Tensor:
        """Backbone blocks, per-modality mean features and the head, on the tokens of :meth:`tokens`."""
        context = self.block_context(available)
        x = self.backbone.ln_pre(tokens)
        for index, block in enumerate(self.backbone.blocks):
            x = self.run_block(index, block, x, context)
        x = self.backbone.ln_post(x)
        features = [x[:, part].mean(dim=1) for part in self.projection.modality_slices()]
        return self.head(torch.cat(features, dim=-1))

    def block_context(self, available: Tensor) -> Any:
        """What :meth:`run_block` needs besides the tokens, computed once per forward pass.

        ``available`` is (B, M) per sample on the patch path and (N, L, M) per
        token (each token's own pixel) on the dense path.
        """
        return available

    # -- dense path (models.dense) ----------------------------------------
    @property
    def receptive_radius(self) -> int:
        """Pixels around a pixel that its dense logits can depend on: the tile halo mapping reads."""
        if self.window_size is None:
            raise NotImplementedError(f"{type(self).__name__} has no dense path")
        blocks = dense.receptive_radius(self.backbone.layers, self.window_size)
        return blocks + self.readout_radius + self.projection.local_kernel // 2

    @property
    def readout_radius(self) -> int:
        """Pixels the dense readout averages over on each side (P // 2 for ``patch_mean``, 0 for ``pixel``)."""
        return self.config.patch_size // 2 if self.dense_readout == "patch_mean" else 0

    dense_chunk_tokens: int = 8192
    """Tokens per call of a block on the dense path (whole windows); a speed knob only: results do not depend on it."""

    def forward_dense(self, inputs: dict[str, Tensor], available: Tensor, origin: Tensor | None = None,
                      margin: int = 0) -> Tensor:
        """Logits (B, K, H - 2 margin, W - 2 margin) for the pixels of crops (B, C_m, H, W); see ``models.dense``."""
        canvas, tokens = self.dense_canvas_tokens(inputs, available, origin)
        return self.dense_logits(tokens, available, canvas, margin)

    def dense_canvas(self, inputs: dict[str, Tensor], available: Tensor, origin: Tensor | None = None) -> dense.Canvas:
        """The window-aligned canvas of crops (B, C_m, H, W) starting at scene ``origin``, once the crops are checked."""
        if self.window_size is None:
            raise NotImplementedError(f"{type(self).__name__} has no dense path (supports_dense is False)")
        self.check_dense_inputs(inputs, available)
        b, _, h, w = available.shape
        return dense.plan_canvas(origin, b, h, w, self.window_size)

    def dense_canvas_tokens(self, inputs: dict[str, Tensor], available: Tensor,
                            origin: Tensor | None = None) -> tuple[dense.Canvas, Tensor]:
        """The crops' canvas and the tokens (B, Hc, Wc, M, width) of :meth:`dense_tokens` on it."""
        canvas = self.dense_canvas(inputs, available, origin)
        return canvas, self.dense_tokens(inputs, available, canvas)

    def dense_tokens(self, inputs: dict[str, Tensor], available: Tensor, canvas: dense.Canvas) -> Tensor:
        """Canvas tokens (B, Hc, Wc, M, width) entering the blocks; methods that rebuild missing tokens override this."""
        return self.projection.dense(inputs, available, canvas)

    def dense_logits(self, tokens: Tensor, available: Tensor, canvas: dense.Canvas, margin: int = 0) -> Tensor:
        """Logits (B, K, H - 2 margin, W - 2 margin) of the crops whose canvas tokens are ``tokens``."""
        h, w = canvas.crop_height, canvas.crop_width
        dense.check_margin(margin, h, w)
        k = self.readout_radius
        inner = max(0, margin - k)  # the readout reads k pixels past each wanted one
        features = self.dense_token_features(tokens, available, canvas, inner)  # (B, M, width, H', W')
        b, m, c, h, w = features.shape
        logits = self.head(features.permute(0, 3, 4, 1, 2).reshape(b, h, w, m * c)).permute(0, 3, 1, 2)
        if k:
            # patch_mean: the head of the mean over each pixel's P x P neighbourhood (inside the crop: a tile's halo
            # covers the rest). The head is affine, so that is the mean of the per-pixel logits: K channels to
            # average, not M * width
            logits = dense.neighbourhood_mean(logits.float(), k).to(logits.dtype)
        cut = margin - inner
        return logits[:, :, cut : h - cut, cut : w - cut] if cut else logits

    def dense_features(self, inputs: dict[str, Tensor], available: Tensor, origin: Tensor | None = None,
                       margin: int = 0) -> Tensor:
        """Per-pixel, per-modality output tokens (B, M, width, H - 2 margin, W - 2 margin) after ``ln_post``."""
        canvas, tokens = self.dense_canvas_tokens(inputs, available, origin)
        dense.check_margin(margin, canvas.crop_height, canvas.crop_width)
        return self.dense_token_features(tokens, available, canvas, margin)

    def dense_token_features(self, tokens: Tensor, available: Tensor, canvas: dense.Canvas, margin: int) -> Tensor:
        """:meth:`dense_features` of canvas tokens (B, Hc, Wc, M, width): the windowed blocks, the crops, ``ln_post``."""
        h, w = canvas.crop_height, canvas.crop_width
        window = self.window_size
        assert window is not None
        x = self.backbone.ln_pre(tokens)
        m = x.shape[3]
        # each token's own pixel pattern, laid out like the tokens: (B, Hc, Wc, M tokens, M modalities)
        pixel = dense.place(available, canvas, False).permute(0, 2, 3, 1)
        token_avail = pixel.unsqueeze(3).expand(-1, -1, -1, m, -1)
        x = dense.run_windowed_blocks(x, token_avail, canvas, margin, window, self.backbone.blocks, self.run_block,
                                      self.block_context, self.dense_chunk_tokens)
        x = dense.crop(x, canvas)  # (B, H, W, M, width)
        if margin:
            x = x[:, margin : h - margin, margin : w - margin]
        return self.backbone.ln_post(x).permute(0, 3, 4, 1, 2)

    def run_block(self, index: int, block: ResidualAttentionBlock, x: Tensor, context: Any) -> Tensor:
        """One backbone block; methods that adapt blocks override this."""
        return block(x)

    def configure_stage(self, stage: str) -> list[nn.Parameter]:
        if stage not in self.stages():
            raise ValueError(f"unknown training stage {stage!r}; {type(self).__name__} has stages {self.stages()}")
        return [p for p in self.parameters() if p.requires_grad]


def resolve_params(config: ModelConfig, defaults: dict[str, Any]) -> dict[str, Any]:
    """``config.params`` over ``defaults``.

    Keys of other registered methods are ignored (one catalog's ``model.params``
    serves every method an evaluation compares); a key no method knows is an
    error, so a typo is not a silent no-op. Methods that declare no
    ``default_params`` make the check a warning.
    """
    foreign = set(config.params) - set(defaults)
    if foreign:
        classes = [method_class(name) for name in available_methods()]
        vocabularies = [getattr(cls, "default_params", None) for cls in classes]
        known = set().union(*(v for v in vocabularies if v is not None))
        unknown = sorted(foreign - known)
        if unknown:
            message = f"unknown {config.method} parameters {unknown} in model.params; known: {sorted(defaults)}"
            if all(v is not None for v in vocabularies):
                raise ValueError(message)
            log.warning(message)
        log.info("%s ignores model.params %s of other methods", config.method, sorted(foreign & known))
    return {**defaults, **{k: v for k, v in config.params.items() if k in defaults}}
