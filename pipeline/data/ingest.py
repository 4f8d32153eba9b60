"""Ingest: read every modality of a scene, align it on the scene grid, write the scene Zarr store.

    python -m pipeline.ingest CATALOG [--scene NAME] [--force]

The store's layout is the contract in :mod:`pipeline.data.store`. It is written under a
temporary name and moved into place when complete. A content hash of the scene's
catalog section, the tile size, the input files and the pipeline version is kept in
the store's attributes; re-running with the same hash does no work.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Any

import numpy as np
import rasterio
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
import zarr

import pipeline
from pipeline.config.catalog import Catalog, Scene
from pipeline.data.grid import SceneGrid, align, scene_grid
from pipeline.data.labels import scene_labels
from pipeline.data.sources import read_source
from pipeline.data.store import band_dim, scene_store_path, wavelength_coord
from pipeline.files import atomic_store, awaited_dask_tasks
from pipeline.storage import (
    Location,
    configure_gdal,
    is_complete,
    is_remote,
    remote_identity,
    url,
    zarr_kwargs,
)

log = logging.getLogger(__name__)

# GDAL's block cache defaults to 5 % of RAM and keeps every block a streaming ingest has read:
# capped here (unless the user sets GDAL_CACHEMAX) so ingest memory does not grow with the scene.
INGEST_GDAL_CACHE_MB = 64
FULL_HASH_LIMIT = 64 * 2**20  # files smaller than this are hashed whole; larger ones by size, mtime, head and tail
EDGE_BYTES = 2**20


# ----------------------------------------------------------------------------- content hash


def _related_files(path: Location) -> list[Location]:
    """``path`` and its side-car files (ENVI header, shapefile parts, .aux.xml), or a store's files (a URL: itself)."""
    if is_remote(path):
        return [path]
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file())
    if not path.parent.is_dir():
        return [path]
    stem = path.name.split(".")[0]
    siblings = [p for p in path.parent.iterdir() if p.is_file() and (p.name == stem or p.name.startswith(stem + "."))]
    return sorted(set(siblings) | {path})


def _fingerprint(path: Location) -> dict[str, Any]:
    if is_remote(path):  # an object's size and ETag (of every object under a prefix): nothing is downloaded
        return {"path": url(path), "identity": remote_identity(path)} if path.exists() else {"path": url(path), "missing": True}
    if not path.exists():
        return {"path": str(path), "missing": True}
    stat = path.stat()
    digest = hashlib.sha256()
    with path.open("rb") as f:
        if stat.st_size < FULL_HASH_LIMIT:
            for block in iter(lambda: f.read(EDGE_BYTES), b""):
                digest.update(block)
        else:
            digest.update(f.read(EDGE_BYTES))
            f.seek(-EDGE_BYTES, os.SEEK_END)
            digest.update(f.read(EDGE_BYTES))
    return {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest.hexdigest()}


def scene_content_hash(catalog: Catalog, scene: Scene) -> str:
    """sha256 of the validated scene section, tile size, input files and pipeline version."""
    files = sorted({f for path in scene.files() for f in _related_files(path)}, key=str)
    payload = {
        "scene": scene.model_dump(mode="json"),
        "tile_size": catalog.output.tile_size,
        "files": [_fingerprint(f) for f in files],
        "pipeline_version": pipeline.__version__,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def stored_hash(path: Location) -> str | None:
    """The content hash of an existing complete scene store, or None when there is no readable complete store."""
    if not is_complete(path):
        return None
    try:
        value = zarr.open_group(url(path), mode="r", **zarr_kwargs(path)).attrs.get("content_hash")
        return value if isinstance(value, str) else None
    except (OSError, ValueError):  # an unreadable old store (zarr's errors derive from these) is rewritten
        return None


# ----------------------------------------------------------------------------- building the dataset


def _modality_variable(name: str, da: xr.DataArray) -> xr.DataArray:
    """An aligned (band, y, x) cube as the store's float32 (band_<name>, y, x) with its wavelength coordinate."""
    bands = da.sizes["band"]
    wavelengths = da["wavelength"].values if "wavelength" in da.coords else np.full(bands, np.nan)
    dim = band_dim(name)
    var = xr.DataArray(
        da.data.astype("float32"),  # stays lazy for dask-backed readers
        dims=(dim, "y", "x"),
        coords={dim: np.arange(1, bands + 1), wavelength_coord(name): (dim, np.asarray(wavelengths, "float64"))},
        name=name,
    )
    return var


def build_scene_dataset(catalog: Catalog, scene: Scene) -> tuple[xr.Dataset, SceneGrid]:
    """Read, align and assemble a scene as the store's Dataset, without attributes.

    GeoTIFF, ENVI and Zarr cubes stay lazy (dask), on the grid or warped onto it chunk
    by chunk, so writing the store streams them window by window and ingest memory does
    not grow with the scene. MAT sources are held in memory one modality at a time;
    masks and labels are one byte a pixel.
    """
    catalog_file = catalog.path
    prefix = f"scenes[{scene.name!r}]"
    raw = {m.name: read_source(m, where=f"{prefix}.modalities[{m.name!r}]") for m in scene.modalities}
    grid = scene_grid(scene.grid, raw, catalog_file)
    aligned: dict[str, xr.DataArray] = {}
    for m in scene.modalities:
        key = f"{prefix}.modalities[{m.name!r}].georeference"
        aligned[m.name] = align(raw[m.name], grid, categorical=False, file=m.source.files[0], key=key)
    del raw

    from pipeline.data.availability import scene_availability

    available = scene_availability(aligned, scene, catalog_file)
    data_vars: dict[str, xr.DataArray] = {}
    for name, da in aligned.items():
        data_vars[name] = _modality_variable(name, da)
    data_vars["available"] = xr.DataArray(
        available.data.astype(bool), dims=("modality", "y", "x"), coords={"modality": np.array(scene.modality_names, dtype=object)}
    )
    if scene.labels is not None:
        for name, da in scene_labels(scene.labels, grid, f"{prefix}.labels").items():
            data_vars[name] = xr.DataArray(np.asarray(da.values, dtype="uint8"), dims=("y", "x"))
    ds = xr.Dataset(data_vars, coords={"y": grid.y, "x": grid.x})
    ds = ds.rio.write_crs(grid.crs).rio.write_transform(grid.transform)
    return ds, grid


def _attributes(catalog: Catalog, scene: Scene, grid: SceneGrid, content_hash: str, ds: xr.Dataset) -> dict[str, Any]:
    classes = [c.model_dump(mode="json") for c in scene.labels.classes] if scene.labels is not None else []
    modalities = [
        {
            "name": m.name,
            "kind": m.kind,
            "bands": int(ds.sizes[band_dim(m.name)]),
            "acquired": m.acquired.isoformat() if m.acquired is not None else None,
            "nodata": m.nodata,
            "band_names": m.band_names,
        }
        for m in scene.modalities
    ]
    t = grid.transform
    return {
        "crs": grid.crs.to_string(),
        "transform": [t.a, t.b, t.c, t.d, t.e, t.f],
        "classes": classes,
        "modalities": modalities,
        "content_hash": content_hash,
        "scene": scene.name,
        "tile_size": catalog.output.tile_size,
        "pipeline_version": pipeline.__version__,
    }


def _chunked(ds: xr.Dataset, tile: int) -> xr.Dataset:
    """Chunk every variable by tile in (y, x), whole along bands and modalities; encode chunks the same."""
    sizes = {d: -1 for d in ds.dims if d not in ("y", "x")}
    ds = ds.chunk({**sizes, "y": tile, "x": tile})
    for _name, var in ds.data_vars.items():
        var.encoding = {"chunks": tuple(c[0] for c in var.chunks)} if var.chunks else {}
    return ds


# ----------------------------------------------------------------------------- writing


def _write_atomically(ds: xr.Dataset, path: Location) -> None:
    """Write the store under a temporary name and move it into place; an old store is replaced, never left half-written.

    On an object store the store is written in place and its completion marker written last.
    """
    with atomic_store(path) as staging, awaited_dask_tasks():
        ds.to_zarr(url(staging), mode="w", zarr_format=3, consolidated=True, **zarr_kwargs(staging))


def ingest_scene(catalog: Catalog, scene: Scene, force: bool = False) -> Location:
    """Write (or keep, when its inputs are unchanged) the scene store of ``scene``; returns its location."""
    configure_gdal(catalog.storage.fsspec_options())  # remote inputs are read by GDAL, also in Dask's threads
    path = scene_store_path(catalog.output.folder, scene.name)
    content_hash = scene_content_hash(catalog, scene)
    if not force and stored_hash(path) == content_hash:
        log.info("scene %s unchanged: %s", scene.name, path)
        return path
    log.info("ingesting scene %s", scene.name)
    with rasterio.Env(GDAL_CACHEMAX=os.environ.get("GDAL_CACHEMAX", INGEST_GDAL_CACHE_MB)):
        ds, grid = build_scene_dataset(catalog, scene)
        ds.attrs = _attributes(catalog, scene, grid, content_hash, ds)
        _write_atomically(_chunked(ds, catalog.output.tile_size), path)
    log.info("scene %s written: %s (%d x %d pixels, %s)", scene.name, path, grid.height, grid.width, grid.crs)
    return path


def ingest_catalog(catalog: Catalog, force: bool = False) -> list[Location]:
    """Ingest every scene of a catalog, in catalog order."""
    return [ingest_scene(catalog, scene, force=force) for scene in catalog.scenes]
