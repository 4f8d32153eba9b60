"""The map store: created empty, filled tile by tile, moved into place when every tile is done.

While tiles are being written the store lives at ``map.zarr.partial``; its
``done`` array (one chunk per tile) records which tiles are complete, so a
killed run that is started again classifies only the missing tiles. The store
carries a run key (scene, checkpoint, tile size, precision, inference path): a partial store
from a different run is discarded rather than mixed in.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import dask.array as da
import numpy as np
import xarray as xr
import zarr

from pipeline.data.store import CLASS_NODATA, PATTERN_NODATA
from pipeline.files import replace_directory
from pipeline.inference.tiling import tile_grid_shape


def run_key(scene_hash: str, checkpoint_hash: str, tile_size: int, precision: str, inference: str = "patch") -> str:
    payload = json.dumps([scene_hash, checkpoint_hash, tile_size, precision, inference])
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def partial_path(final: Path) -> Path:
    return final.with_name(final.name + ".partial")


def read_run_key(store: Path) -> str | None:
    """The run key of a map store, or None when there is no readable store there."""
    try:
        return zarr.open_group(store, mode="r").attrs.get("run_key")
    except Exception:  # noqa: BLE001 - any unreadable store is simply not reusable
        return None


def create_map_store(path: Path, scene: xr.Dataset, tile_size: int, key: str, extra_attrs: dict | None = None) -> None:
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
    if path.exists():
        shutil.rmtree(path)
    out.to_zarr(path, mode="w", compute=False, zarr_format=3, encoding=encoding, consolidated=False)


def prepare_map_store(final: Path, scene: xr.Dataset, tile_size: int, key: str, extra_attrs: dict | None = None) -> tuple[Path, np.ndarray]:
    """The partial store to write into and the (tile_row, tile_col) done flags; resumes a matching partial."""
    partial = partial_path(final)
    if read_run_key(partial) != key:
        create_map_store(partial, scene, tile_size, key, extra_attrs)
    done = zarr.open_group(partial, mode="r")["done"][...]
    return partial, np.asarray(done, dtype=bool)


def finalise_map_store(final: Path) -> Path:
    """Move a complete partial store into place (replacing an older map)."""
    partial = partial_path(final)
    done = zarr.open_group(partial, mode="r")["done"][...]
    if not np.all(done):
        missing = int((~np.asarray(done, dtype=bool)).sum())
        raise RuntimeError(f"{partial}: {missing} tile(s) not written; the map is incomplete")
    replace_directory(partial, final)
    return final
