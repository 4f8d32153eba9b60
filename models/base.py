"""The one interface every missing-modality classifier implements.

    logits = model(inputs, available)

``inputs`` maps a modality name to a float tensor (B, C_m, P, P): the patch
around each pixel, already normalised. ``available`` is a bool tensor (B, M)
in the order of ``config.modalities``; a missing modality arrives zero-filled
with ``available`` false. Training goes through the same interface: a trainer
asks for the stages, configures each, and calls ``training_loss``; it never
needs to know which method it trains.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from models.params import ParamRule


@dataclass
class ModelConfig:
    """What a model needs to know about its data, and its hyper-parameters.

    Args:
        method: registry name (``mamol``, ``baseline``, ``mmp``, ``lvpcnet``).
        modalities: modality names, in the order of the ``available`` columns.
        bands: band count per modality, same order.
        num_classes: number of output classes (logit k is class index k).
        patch_size: side of the square patch in pixels (odd; the pixel is the centre).
        backbone: backbone preset name (see ``models.backbone.PRESETS``).
        pretrained: CLIP weights (a local file path, or an open_clip tag to download), or None.
        kinds: modality kinds (hs, lidar, sar, msi), same order; used by methods that describe modalities.
        class_names: class names, index order.
        class_descriptions: per class, text per key ('shared' and modality kinds), for language-guided methods.
        params: method hyper-parameters (see each method's docstring).
    """

    method: str
    modalities: list[str]
    bands: list[int]
    num_classes: int
    patch_size: int = 7
    backbone: str = "tiny"
    pretrained: str | None = None
    kinds: list[str] | None = None
    class_names: list[str] | None = None
    class_descriptions: list[dict[str, str]] | None = None
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.modalities) != len(self.bands):
            raise ValueError(f"{len(self.modalities)} modalities but {len(self.bands)} band counts")
        if self.kinds is not None and len(self.kinds) != len(self.modalities):
            raise ValueError(f"{len(self.modalities)} modalities but {len(self.kinds)} kinds")
        if self.patch_size % 2 == 0:
            raise ValueError(f"patch_size must be odd, got {self.patch_size}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown model config keys {sorted(unknown)}")
        return cls(**data)


@dataclass(frozen=True)
class OptimizerDefaults:
    """A method's training defaults: the papers' where they give them, else as measured here (docs/accuracy.md)."""

    lr: float = 2e-3
    weight_decay: float = 2e-2
    dense_lr: float | None = None
    """The dense path's learning rate where it was measured to want its own (None: ``lr``)."""
    frozen_lr: float | None = None
    """The learning rate with the backbone frozen, on either path, where it was measured to want its own (None: the
    path's): a probe trains only the projection and head, a few weights that a rate tuned for the whole model undertrains."""
    batch_size: int = 64
    """Samples per step on the patch path (the dense path's crops per step are its own setting)."""
    frozen_batch_size: int | None = None
    """The patch path's samples per step with the backbone frozen, where it was measured to want its own (None:
    ``batch_size``): a probe's few weights steady with more, smaller steps."""

    def for_training(self, *, dense: bool, frozen: bool) -> OptimizerDefaults:
        """The defaults a trainer uses: the learning rate ``frozen_lr`` with the backbone frozen, else ``dense_lr`` on
        the dense path, else ``lr``; the batch ``frozen_batch_size`` with the backbone frozen, else ``batch_size``."""
        lr = self.lr
        if frozen and self.frozen_lr is not None:
            lr = self.frozen_lr
        elif dense and self.dense_lr is not None:
            lr = self.dense_lr
        batch_size = self.frozen_batch_size if frozen and self.frozen_batch_size is not None else self.batch_size
        return dataclasses.replace(self, lr=lr, batch_size=batch_size)


def freezes_backbone(pretrained: bool, freeze_backbone: bool | None) -> bool:
    """Whether a model keeps its backbone's weights as they are in training: ``params.freeze_backbone`` where it
    is given, else whether the backbone starts from pretrained weights (the papers' regime)."""
    return pretrained if freeze_backbone is None else bool(freeze_backbone)


class MissingModalityClassifier(nn.Module):
    """Base class: subclasses implement ``forward`` and may override the training hooks."""

    optimizer_defaults = OptimizerDefaults()
    backbone_frozen: bool = False
    """Whether the backbone's weights stay as they are in training (a pretrained backbone, by default); set by subclasses."""
    supports_dense: bool = False
    """Whether the class offers ``forward_dense`` (one pass classifies every pixel of a crop; ``models.dense``)."""
    param_rules: dict[str, ParamRule] = {}
    """Value rules of this method's ``config.params`` keys (``models.params``), checked when a catalog is read."""
    dense_by_default: bool = False
    """Whether catalog ``model.inference: auto`` trains (and so maps) this method on the dense path: set where
    the dense path was measured to hold the patch path's accuracy (docs/accuracy.md), with ``supports_dense``."""
    frozen_dense_by_default: bool = False
    """``dense_by_default`` for a frozen backbone only: where the dense path was measured to hold the patch path's
    accuracy with the backbone frozen (a probe of a pretrained backbone), not trained whole."""
    masks_modalities_in_training = False
    """True when :meth:`training_availability` already draws protocol ``mmp``'s mask (MMP), so the trainer does not."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config

    # -- inference -------------------------------------------------------
    def forward(self, inputs: dict[str, Tensor], available: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward_dense(self, inputs: dict[str, Tensor], available: Tensor, origin: Tensor | None = None,
                      margin: int = 0) -> Tensor:
        """Logits (B, K, H - 2 margin, W - 2 margin) for the pixels of crops (B, C_m, H, W), where ``supports_dense``."""
        raise NotImplementedError(f"{type(self).__name__} has no dense path (supports_dense is False)")

    @property
    def receptive_radius(self) -> int:
        """Pixels around a pixel that can change its dense logits (the halo a tile is read with)."""
        raise NotImplementedError(f"{type(self).__name__} has no dense path (supports_dense is False)")

    # -- training hooks --------------------------------------------------
    def stages(self) -> list[str]:
        """Names of the training stages, in order; most methods have one."""
        return ["main"]

    def configure_stage(self, stage: str) -> list[nn.Parameter]:
        """Set ``requires_grad`` for ``stage`` and return the parameters to optimise."""
        return [p for p in self.parameters() if p.requires_grad]

    def training_availability(self, available: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Availability the model trains on for a batch; methods that mask modalities themselves override it."""
        return available

    def training_loss(self, inputs: dict[str, Tensor], available: Tensor, targets: Tensor, stage: str) -> dict[str, Tensor]:
        """Losses for one batch; ``loss`` is what is minimised, other entries are logged."""
        logits = self(inputs, available)
        ce = nn.functional.cross_entropy(logits, targets)
        return {"loss": ce, "ce": ce.detach()}

    def dense_training_patterns(self, patterns: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The availability patterns (N, M) the dense path's training regions take, from the protocol's draw.

        The dense path's :meth:`training_availability`: methods that mask modalities themselves override it.
        """
        return patterns

    def dense_training_loss(self, inputs: dict[str, Tensor], available: Tensor, real: Tensor, targets: Tensor,
                            origin: Tensor | None, margin: int, stage: str) -> dict[str, Tensor]:
        """Losses for one batch of dense crops; ``loss`` is what is minimised, other entries are logged.

        ``available`` (B, M, H, W) is what the model is shown, ``real`` what the crops really have (a superset:
        the training masks withheld the rest); ``targets`` (B, H - 2 margin, W - 2 margin) are class indices,
        -1 where a pixel is not a training pixel (masked cross-entropy).
        """
        logits = self.forward_dense(inputs, available, origin, margin)
        ce = nn.functional.cross_entropy(logits.float(), targets, ignore_index=-1)
        return {"loss": ce, "ce": ce.detach()}

    def check_inputs(self, inputs: dict[str, Tensor], available: Tensor) -> None:
        cfg = self.config
        missing = [m for m in cfg.modalities if m not in inputs]
        if missing:
            raise ValueError(f"inputs lack modalities {missing}; the model expects {cfg.modalities}")
        for name, bands in zip(cfg.modalities, cfg.bands):
            shape = tuple(inputs[name].shape)
            if len(shape) != 4 or shape[1] != bands or shape[2] != cfg.patch_size or shape[3] != cfg.patch_size:
                raise ValueError(
                    f"modality {name!r}: expected a tensor (B, {bands}, {cfg.patch_size}, {cfg.patch_size}), got {shape}"
                )
        if available.dtype != torch.bool or available.dim() != 2 or available.shape[1] != len(cfg.modalities):
            raise ValueError(f"available must be a bool tensor (B, {len(cfg.modalities)}), got {available.dtype} {tuple(available.shape)}")

    def check_dense_inputs(self, inputs: dict[str, Tensor], available: Tensor) -> None:
        cfg = self.config
        missing = [m for m in cfg.modalities if m not in inputs]
        if missing:
            raise ValueError(f"inputs lack modalities {missing}; the model expects {cfg.modalities}")
        if available.dtype != torch.bool or available.dim() != 4 or available.shape[1] != len(cfg.modalities):
            raise ValueError(
                f"available must be a bool tensor (B, {len(cfg.modalities)}, H, W), got {available.dtype} {tuple(available.shape)}"
            )
        b, _, h, w = available.shape
        for name, bands in zip(cfg.modalities, cfg.bands):
            shape = tuple(inputs[name].shape)
            if shape != (b, bands, h, w):
                raise ValueError(f"modality {name!r}: expected a tensor {(b, bands, h, w)}, got {shape}")
