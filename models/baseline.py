"""The baseline: the same projection and backbone as MaMOL, no experts.

Missing modalities are handled only by the token replacement of
``models.projection`` (zeros by default): the model has no notion of the
missing pattern beyond that. ``config.params`` takes the common keys of
``models.classifier`` (``missing_tokens``, ``freeze_backbone``, ``quick_gelu``,
``window_size``). It has the dense path (``models.dense``).
"""

from __future__ import annotations

from models.base import OptimizerDefaults
from models.classifier import PatchTransformerClassifier
from models.registry import register


@register("baseline")
class Baseline(PatchTransformerClassifier):
    """Projection, backbone blocks unchanged, modality features concatenated into a linear head."""

    supports_dense = True
    # trained whole, 1e-3 on both paths: at 2e-3 its from-scratch rows swung by up to 3.6 points between seeds on
    # MUUFL and Trento, and 1e-3 was ahead or level on every row measured and steadier where 2e-3 swung; probing a
    # frozen backbone it keeps 2e-3, where 1e-3 was behind, in batches of 32: at 64 its balanced MUUFL rows on a
    # pretrained backbone spread 2.06 and 1.98 over their test masks, at 32 1.30 and 1.10, half a point ahead
    # (docs/accuracy.md)
    optimizer_defaults = OptimizerDefaults(lr=1e-3, frozen_lr=2e-3, frozen_batch_size=32)
    # probing a frozen pretrained backbone, the dense path was ahead of the patch path on every MUUFL row (seed 0) and
    # on every seed of its balanced rows, by 2.0 to 6.9 points, and spread at most 1.69 where patches spread up to
    # 3.22 (docs/accuracy.md); trained whole from scratch its dense accuracy is not measured row by row: patches
    frozen_dense_by_default = True
