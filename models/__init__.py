"""The classifiers: one interface (``models.base``), a registry of methods, safetensors checkpoints.

Importing the package registers every method module.
"""

from models import baseline, lvpcnet, mamol, mmp  # noqa: F401  (registration)
from models.backbone import (
    PRESETS,
    BackbonePreset,
    PretrainedWeightsError,
    PretrainedWeightsNotFoundError,
    build_backbone,
)
from models.base import MissingModalityClassifier, ModelConfig, OptimizerDefaults
from models.checkpoint import (
    CheckpointFormatError,
    CheckpointMismatchError,
    checkpoint_hash,
    load_checkpoint,
    read_checkpoint_config,
    save_checkpoint,
)
from models.registry import available_methods, build_model, method_class, register

__all__ = [
    "PRESETS",
    "BackbonePreset",
    "CheckpointFormatError",
    "CheckpointMismatchError",
    "MissingModalityClassifier",
    "ModelConfig",
    "OptimizerDefaults",
    "PretrainedWeightsError",
    "PretrainedWeightsNotFoundError",
    "available_methods",
    "build_backbone",
    "build_model",
    "checkpoint_hash",
    "load_checkpoint",
    "method_class",
    "read_checkpoint_config",
    "register",
    "save_checkpoint",
]
