"""Zarr reader: one variable of a Zarr store (v2 or v3), with its CRS when the store has one (rioxarray).

The variable stays lazy (dask, the store's chunks), so it streams into the scene store;
every chunk is decoded once up front so a corrupt one is reported here.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from pipeline.config.catalog import Source
from pipeline.config.errors import SourceError
from pipeline.data.sources._array import choose_key, single_path
from pipeline.storage import Location, url, zarr_kwargs


def _open(path: Location) -> xr.Dataset:
    """Open with consolidated metadata when the store has it, without otherwise (and without a warning); URLs too."""
    try:
        return xr.open_zarr(url(path), decode_coords="all", consolidated=True, **zarr_kwargs(path))
    except (ValueError, KeyError):
        return xr.open_zarr(url(path), decode_coords="all", consolidated=False, **zarr_kwargs(path))


def check_chunks(da: xr.DataArray) -> None:
    """Decode every chunk of a dask-backed variable once, one at a time, keeping nothing: a corrupt chunk fails
    here, where the source is named, and memory stays at one chunk whatever the variable's size."""
    if da.chunks is None:
        return
    for index in np.ndindex(*da.data.numblocks):
        da.data.blocks[index].compute(scheduler="synchronous")


def read_zarr(source: Source, where: str) -> xr.DataArray:
    """Read ``source.key`` (or the only data variable) of a Zarr store as (band, y, x)."""
    path = single_path(source, where, "Zarr store")
    if not path.exists():
        raise SourceError(path, f"{where}.path", "an existing Zarr store", "no such file or folder")
    try:
        ds = _open(path)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SourceError(path, f"{where}.path", "a readable Zarr store", f"{type(exc).__name__}: {exc}") from None
    names = [str(n) for n in ds.data_vars]
    key = choose_key(path, where, source.key, names, "variable", "store")
    da = ds[key]
    if da.ndim == 2:
        da = da.expand_dims(band=[1])
    if da.ndim != 3:
        raise SourceError(path, f"{where}.key", "a 2-D (y, x) or 3-D (band, y, x) variable", f"dims {da.dims}")
    band, y, x = da.dims
    da = da.rename({band: "band"}) if band != "band" else da
    if f"wavelength_{key}" in da.coords:  # a modality of a scene store written by ingest
        da = da.rename({f"wavelength_{key}": "wavelength"})
    if (y, x) != ("y", "x"):
        raise SourceError(path, f"{where}.key", "dims (band, y, x)", f"dims {da.dims}")
    try:
        check_chunks(da)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise SourceError(path, f"{where}.key", f"readable chunks of {key!r}", f"{type(exc).__name__}: {exc}") from None
    if "band" not in da.coords or not np.issubdtype(da["band"].dtype, np.integer):
        da = da.assign_coords(band=np.arange(1, da.sizes["band"] + 1))
    return da
