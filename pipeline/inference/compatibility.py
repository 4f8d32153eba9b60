"""Does a checkpoint fit a scene? Modalities, band counts and the class table, checked before any tile is classified.

A checkpoint's logit k means its class k: a class table that differs from the catalog's (other
values, other names, another order) would relabel every pixel without any error, so it is refused
here, naming the checkpoint's ``config.json`` and the file the scene's classes come from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import xarray as xr

from models import CheckpointFormatError, read_checkpoint_config
from models.checkpoint import CONFIG_FILE
from pipeline.config.errors import CheckpointError
from pipeline.data.store import band_dim
from pipeline.storage import Location


def class_pairs(classes: list[dict[str, Any]]) -> list[tuple[int, str]]:
    """``[(value, name), ...]`` of a class table, in its order."""
    return [(int(c["value"]), str(c["name"])) for c in classes]


def check_checkpoint_fits(checkpoint: Path, scene: xr.Dataset, source: Location | None,
                          classes: list[tuple[int, str]] | None = None) -> dict[str, Any]:
    """The checkpoint's parsed ``config.json``, after checking it against the scene; else :class:`CheckpointError`.

    Args:
        checkpoint: checkpoint directory.
        scene: the scene store (its ``modality`` coordinate, ``band_<m>`` sizes and ``classes`` attribute).
        source: the file the expected classes come from (the catalog; the scene store when mapping alone).
        classes: the expected ``(value, name)`` pairs; default: the scene store's class table.
    """
    config_file = Path(checkpoint) / CONFIG_FILE
    try:
        config = read_checkpoint_config(checkpoint)
    except CheckpointFormatError as exc:
        raise CheckpointError(checkpoint, "model.checkpoint", "a safetensors checkpoint (model.safetensors + config.json)",
                              str(exc)) from None
    model = config.get("model") or {}
    where = str(source) if source is not None else "the scene store"
    modalities = [str(m) for m in scene["modality"].values.tolist()]
    if list(model.get("modalities") or []) != modalities:
        raise CheckpointError(config_file, "model.modalities", f"the modalities of {where}: {modalities}",
                              str(model.get("modalities")))
    bands = [int(scene.sizes[band_dim(m)]) for m in modalities]
    if [int(b) for b in model.get("bands") or []] != bands:
        raise CheckpointError(config_file, "model.bands", f"the band counts of {where}: {dict(zip(modalities, bands))}",
                              str(model.get("bands")))
    expected = classes if classes is not None else class_pairs(scene.attrs.get("classes") or [])
    if not expected:
        return config  # a scene without a class table (no labels declared): nothing to compare
    try:
        found = class_pairs(config.get("metadata", {}).get("classes") or [])
    except (KeyError, TypeError, ValueError):
        raise CheckpointError(config_file, "metadata.classes", "a list of {value, name} entries", "an unreadable table") from None
    if found != expected:
        raise CheckpointError(config_file, "metadata.classes",
                              f"the classes of {where} (values and names, in order): {expected}", str(found))
    names, count = model.get("class_names"), model.get("num_classes")
    if count != len(expected) or (names is not None and list(names) != [n for _, n in expected]):
        raise CheckpointError(config_file, "model.num_classes / model.class_names",
                              f"{len(expected)} classes named as in {where}: {[n for _, n in expected]}",
                              f"{count} classes {names}")
    return config
