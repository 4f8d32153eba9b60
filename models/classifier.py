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
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from open_clip.transformer import ResidualAttentionBlock
from torch import Tensor, nn

from models.backbone import build_backbone
from models.base import MissingModalityClassifier, ModelConfig
from models.projection import ModalityProjection
from models.registry import available_methods, method_class

log = logging.getLogger(__name__)

COMMON_PARAMS: dict[str, Any] = {"missing_tokens": "zero", "freeze_backbone": None, "quick_gelu": None}


class PatchTransformerClassifier(MissingModalityClassifier):
    """Tokens of every modality through the backbone; modality features concatenated into a linear head.

    A modality's feature is the mean of its P*P output tokens; the head sees
    the M features side by side (B, M*width).
    """

    default_params: dict[str, Any] = COMMON_PARAMS

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.params = resolve_params(config, self.default_params)
        self.backbone = build_backbone(config.backbone, config.pretrained, self.params["quick_gelu"])
        width = self.backbone.width
        self.projection = ModalityProjection(
            config.modalities, config.bands, config.patch_size, width, self.params["missing_tokens"]
        )
        self.head = nn.Linear(len(config.modalities) * width, config.num_classes)
        freeze = self.params["freeze_backbone"]
        self.backbone_frozen = config.pretrained is not None if freeze is None else bool(freeze)
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
        """What :meth:`run_block` needs besides the tokens, computed once per forward pass."""
        return available

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
