"""Checkpoints: a directory with ``model.safetensors`` (every weight) and ``config.json``.

``config.json`` holds ``format_version``, ``model`` (``ModelConfig.to_dict()``),
``metadata`` (whatever the pipeline passes: normalisation statistics, class
table, catalog hash) and ``versions`` (python, torch, open_clip, safetensors).
Pickle checkpoints (``torch.save`` files) are refused: loading one can run
arbitrary code.

A checkpoint holds the backbone's weights too, so loading one never reads
the CLIP weights file nor needs a network.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
from pathlib import Path
from typing import Any

import open_clip
import safetensors
import torch
from safetensors.torch import load_file, save_file

from models.backbone import skip_pretrained_weights
from models.base import MissingModalityClassifier, ModelConfig
from models.registry import build_model, method_class

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
MAX_CONFIG_BYTES = 1 << 20  # config.json: normalisation, class table, params; a larger one is refused (written or read)
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".pkl", ".pickle")
_ZIP_MAGIC = b"PK\x03\x04"


class CheckpointFormatError(ValueError):
    """The checkpoint is not a readable safetensors + JSON checkpoint (pickle, missing file, corrupt)."""

    def __init__(self, path: str | os.PathLike[str], message: str) -> None:
        self.path = Path(path)
        super().__init__(f"checkpoint {self.path}: {message}")


class CheckpointMismatchError(ValueError):
    """The checkpoint was trained on other modalities or band counts than the data offers."""

    def __init__(self, path: str | os.PathLike[str], message: str) -> None:
        self.path = Path(path)
        super().__init__(f"checkpoint {self.path}: {message}")


def save_checkpoint(
    model: MissingModalityClassifier, directory: str | os.PathLike[str], metadata: dict[str, Any] | None = None
) -> Path:
    """Write ``model`` into ``directory`` (created if needed): ``model.safetensors`` and ``config.json``.

    The files are written in place; a caller that must never leave a half-written
    checkpoint writes into a staging directory and moves it into place (the pipeline
    does, with ``pipeline.files.atomic_directory``).
    """
    target = Path(directory)
    config = {
        "format_version": FORMAT_VERSION,
        "model": model.config.to_dict(),
        "metadata": metadata or {},
        "versions": _versions(),
    }
    config_text = json.dumps(config, indent=2, sort_keys=True, default=_json_path)  # fails early on non-JSON metadata
    if len(config_text) > MAX_CONFIG_BYTES:
        raise CheckpointFormatError(
            target, f"{CONFIG_FILE} would be {len(config_text)} bytes, more than {MAX_CONFIG_BYTES}: params or metadata too large"
        )
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    if target.exists() and not target.is_dir():
        raise FileExistsError(f"cannot write a checkpoint to {target}: a file of that name exists")
    target.mkdir(parents=True, exist_ok=True)
    save_file(state, str(target / WEIGHTS_FILE), metadata={"format": "pt", "method": model.config.method})
    (target / CONFIG_FILE).write_text(config_text)
    return target


def read_checkpoint_config(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """The parsed ``config.json`` of a checkpoint, after the format checks (weights not read)."""
    path = Path(directory)
    _refuse_non_directory(path)
    config_path = path / CONFIG_FILE
    if not (path / WEIGHTS_FILE).is_file():
        pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES) if path.is_dir() else []
        if pickles:
            raise CheckpointFormatError(
                path, f"holds {pickles} but no {WEIGHTS_FILE}: pickle checkpoints are refused; convert to safetensors"
            )
        raise CheckpointFormatError(path, f"{WEIGHTS_FILE} is missing")
    if not config_path.is_file():
        raise CheckpointFormatError(path, f"{CONFIG_FILE} is missing")
    size = config_path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise CheckpointFormatError(path, f"{CONFIG_FILE} is {size} bytes, more than {MAX_CONFIG_BYTES}")
    try:
        config = json.loads(config_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointFormatError(path, f"{CONFIG_FILE} is not valid JSON: {error}") from error
    if not isinstance(config, dict) or "model" not in config:
        raise CheckpointFormatError(path, f"{CONFIG_FILE} has no 'model' section")
    version = config.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointFormatError(path, f"format_version is {version!r}; this code reads version {FORMAT_VERSION}")
    return config


def load_checkpoint(
    directory: str | os.PathLike[str],
    map_location: str | torch.device = "cpu",
    expected_modalities: list[str] | None = None,
    expected_bands: list[int] | None = None,
) -> tuple[MissingModalityClassifier, dict[str, Any]]:
    """The model saved in ``directory`` (in eval mode) and its metadata.

    Args:
        directory: a checkpoint directory written by :func:`save_checkpoint`.
        map_location: device for the weights.
        expected_modalities: the modality names (in order) the data offers; a
            checkpoint with others is refused.
        expected_bands: the band count per modality the data offers.

    Raises:
        CheckpointFormatError: pickle, missing or corrupt files.
        CheckpointMismatchError: modalities or band counts differ from the expected ones.
    """
    path = Path(directory)
    config = read_checkpoint_config(path)
    try:
        model_config = ModelConfig.from_dict(config["model"])
    except (TypeError, ValueError) as error:
        raise CheckpointFormatError(path, f"invalid model config in {CONFIG_FILE}: {error}") from error
    check_compatible(path, model_config, expected_modalities, expected_bands)
    try:
        state = load_file(str(path / WEIGHTS_FILE), device=str(map_location))
    except (safetensors.SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise CheckpointFormatError(path, f"{WEIGHTS_FILE} is not a readable safetensors file: {error}") from error
    defaults = getattr(method_class(model_config.method), "default_params", None) or {}
    geometry = {k: v for k, v in saved_dense_geometry(state, model_config.params).items() if defaults.get(k) != v}
    if geometry:  # trained under other defaults: rebuilt with the geometry its weights have
        model_config = ModelConfig.from_dict({**model_config.to_dict(), "params": {**model_config.params, **geometry}})
    with skip_pretrained_weights():
        model = build_model(model_config)
    state = {**state, **dense_weights_it_predates(model.state_dict(), state)}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        message = f"weights do not fit the {model_config.method} model of {CONFIG_FILE}: {error}"
        raise CheckpointFormatError(path, message) from error
    model.to(map_location).eval()
    return model, config.get("metadata", {})


def saved_dense_geometry(state: dict[str, torch.Tensor], params: dict[str, Any]) -> dict[str, int]:
    """The dense path's ``window_size`` and ``local_kernel`` the weights were trained with, where ``params`` leaves them out.

    A checkpoint's config records the catalog's params, not the defaults of the code that trained
    it; those defaults changed (windows of 8, 4, then 2 px with a 5 x 5 local convolution), and the
    weights' shapes say which ones a checkpoint has, so one trained before a change still loads.
    """
    position = state.get("projection.window_position")
    if position is None:  # no dense path in this model
        return {}
    found: dict[str, int] = {}
    if "window_size" not in params:
        found["window_size"] = math.isqrt(position.shape[0])
    if "local_kernel" not in params:
        conv = state.get("projection.local.0.weight")
        found["local_kernel"] = int(conv.shape[-1]) if conv is not None else 0
    return found


def dense_weights_it_predates(own: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The dense path's weights of ``own`` (a built model's state) that a checkpoint saved before its method had it lacks.

    MMP and LVPCnet gained the dense path on 2026-12-07: their checkpoints from before have no window
    position embedding or local convolutions. They keep their initial values (a patch-trained checkpoint maps
    on patches and never reads them); any other missing weight still fails the strict load.
    """
    if "projection.window_position" in state:
        return {}
    dense_only = {k: v for k, v in own.items() if k == "projection.window_position" or k.startswith("projection.local.")}
    return dense_only if all(k not in state for k in dense_only) else {}


def check_compatible(
    path: Path, config: ModelConfig, expected_modalities: list[str] | None, expected_bands: list[int] | None
) -> None:
    """Refuse a checkpoint whose modalities or band counts are not the expected ones."""
    if expected_modalities is not None and list(expected_modalities) != list(config.modalities):
        raise CheckpointMismatchError(
            path, f"trained on modalities {config.modalities}, but the data has modalities {list(expected_modalities)}"
        )
    if expected_bands is not None and [int(b) for b in expected_bands] != list(config.bands):
        raise CheckpointMismatchError(
            path,
            f"trained on band counts {dict(zip(config.modalities, config.bands))}, "
            f"but the data has band counts {list(expected_bands)} "
            f"(modalities {expected_modalities or config.modalities})",
        )


def checkpoint_hash(directory: str | os.PathLike[str]) -> str:
    """sha256 over the weights then the config file: identifies a trained model."""
    path = Path(directory)
    read_checkpoint_config(path)
    digest = hashlib.sha256()
    for name in (WEIGHTS_FILE, CONFIG_FILE):
        with open(path / name, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _refuse_non_directory(path: Path) -> None:
    if path.is_dir():
        return
    if not path.exists():
        raise CheckpointFormatError(path, "does not exist")
    with open(path, "rb") as f:
        head = f.read(4)
    is_pickle = len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5  # PROTO opcode, protocols 2-5
    if path.suffix in PICKLE_SUFFIXES or head.startswith(_ZIP_MAGIC) or is_pickle:
        raise CheckpointFormatError(
            path, "is a pickle (torch.save) file: pickle checkpoints are refused; convert to safetensors"
        )
    raise CheckpointFormatError(path, f"is a file; a checkpoint is a directory with {WEIGHTS_FILE} and {CONFIG_FILE}")


def _json_path(value: Any) -> str:
    """Paths (a catalog's ``model.pretrained``) are written as strings; anything else not JSON is an error."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"checkpoint config value {value!r} of type {type(value).__name__} is not JSON serialisable")


def _versions() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "open_clip": open_clip.__version__,
        "safetensors": safetensors.__version__,
    }
