"""The baseline: the same projection and backbone as MaMOL, no experts.

Missing modalities are handled only by the token replacement of
``models.projection`` (zeros by default): the model has no notion of the
missing pattern beyond that. ``config.params`` takes the common keys of
``models.classifier`` (``missing_tokens``, ``freeze_backbone``, ``quick_gelu``,
``window_size``). It has the dense path (``models.dense``).
"""

from __future__ import annotations

from models.classifier import PatchTransformerClassifier
from models.registry import register


@register("baseline")
class Baseline(PatchTransformerClassifier):
    """Projection, backbone blocks unchanged, modality features concatenated into a linear head."""

    supports_dense = True
