"""The map store: created empty, filled tile by tile, moved into place when every tile is done.

While tiles are being written the store lives at ``map.zarr.partial``; its
``done`` array (one chunk per tile) records which tiles are complete, so a
killed run that is started again classifies only the missing tiles. The store
carries a run key (scene, checkpoint, tile size, precision, inference path): a partial store
from a different run is discarded rather than mixed in.

On an object store (a URL) there is no rename: the partial store is the final
location itself, written while its ``<store>.complete`` marker is absent; finalising
writes the marker (see :mod:`pipeline.storage`). Tiles are chunk-aligned (one chunk
per tile in every array, ``done`` included), so no two workers write one object.
"""

from __future__ import annotations

import hashlib
import json

import dask.array as da
import numpy as np
import xarray as xr
import zarr

from pipeline.data.store import CLASS_NODATA, PATTERN_NODATA
from pipeline.files import replace_directory
from pipeline.inference.tiling import tile_grid_shape
from pipeline.storage import (
    Location,
    is_complete,
    is_remote,
    local_path,
    mark_complete,
    mark_incomplete,
    remove_tree,
    url,
    zarr_kwargs,
)


def run_key(scene_hash: str, checkpoint_hash: str, tile_size: int, precision: str, inference: str = "patch") -> str:
    payload = json.dumps([scene_hash, checkpoint_hash, tile_size, precision, inference])
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def partial_path(final: Location) -> Location:
    """Where tiles are written: ``map.zarr.partial`` beside a local map, the map's own prefix on an object store."""
    return final if is_remote(final) else final.with_name(final.name + ".partial")


def read_run_key(store: Location) -> str | None:
    """The run key of a map store, or None when there is no readable store there."""
    try:
        key = zarr.open_group(url(store), mode="r", **zarr_kwargs(store)).attrs.get("run_key")
        return key if isinstance(key, str) else None
    except Exception:  # noqa: BLE001 - any unreadable store is simply not reusable
        return None


def complete_run_key(final: Location) -> str | None:
    """The run key of a complete map (one moved into place, or marked complete on an object store)."""
    return read_run_key(final) if is_complete(final) else None


def create_map_store(path: Location, scene: xr.Dataset, tile_size: int, key: str, extra_attrs: dict | None = None) -> None:
    """Write the empty map store (metadata only) on the scene grid, chunked by tile."""
    ny, nx = scene.sizes["y"], scene.sizes["x"]
    chunks = (tile_size, tile_size)
    tr, tc = tile_grid_shape(ny, nx, tile_size)
    coords = {"y": scene["y"], "x": scene["x"]}
    if "spatial_ref" in scene.coords:
        coords["spatial_ref"] = scene["spatial_ref"]
    out = xr.Dataset(
        {
            "class": (("y", "x"), da.full((ny, nx), CLASS_NODATA, dtype=np.uint8, chunks=chunks)),
            "confidence": (("y", "x"), da.full((ny, nx), np.nan, dtype=np.float32, chunks=chunks)),
            "pattern": (("y", "x"), da.full((ny, nx), PATTERN_NODATA, dtype=np.uint8, chunks=chunks)),
            "done": (("tile_row", "tile_col"), da.zeros((tr, tc), dtype=np.uint8, chunks=(1, 1))),
        },
        coords=coords,
    )
    for name in ("class", "pattern"):
        out[name].attrs["grid_mapping"] = "spatial_ref"
    out["confidence"].attrs["grid_mapping"] = "spatial_ref"
    attrs = {k: scene.attrs[k] for k in ("crs", "transform", "classes", "modalities", "scene") if k in scene.attrs}
    attrs.update({"run_key": key, "tile_size": tile_size, "class_nodata": CLASS_NODATA})
    attrs.update(extra_attrs or {})
    out.attrs = attrs
    encoding = {
        "class": {"fill_value": CLASS_NODATA},
        "confidence": {"fill_value": np.nan},
        "pattern": {"fill_value": PATTERN_NODATA},
        "done": {"fill_value": 0},
    }
    if is_remote(path):
        mark_incomplete(path)  # first: a reader never takes what follows for a complete map
    remove_tree(path)
    out.to_zarr(url(path), mode="w", compute=False, zarr_format=3, encoding=encoding, consolidated=False, **zarr_kwargs(path))


def prepare_map_store(final: Location, scene: xr.Dataset, tile_size: int, key: str, extra_attrs: dict | None = None) -> tuple[Location, np.ndarray]:
    """The partial store to write into and the (tile_row, tile_col) done flags; resumes a matching partial."""
    partial = partial_path(final)
    if read_run_key(partial) != key:
        create_map_store(partial, scene, tile_size, key, extra_attrs)
    done = zarr.open_array(url(partial), path="done", mode="r", **zarr_kwargs(partial))[...]
    return partial, np.asarray(done, dtype=bool)


def finalise_map_store(final: Location) -> Location:
    """Move a complete partial store into place (replacing an older map); on an object store, mark it complete."""
    partial = partial_path(final)
    done = zarr.open_array(url(partial), path="done", mode="r", **zarr_kwargs(partial))[...]
    if not np.all(done):
        missing = int((~np.asarray(done, dtype=bool)).sum())
        raise RuntimeError(f"{partial}: {missing} tile(s) not written; the map is incomplete")
    if is_remote(final):
        mark_complete(final, tiles=int(np.asarray(done).size))
    else:
        replace_directory(local_path(partial), local_path(final))
    return final
