"""Shared helpers of the readers: shape a plain array as (band, y, x) and attach a declared georeference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr
from affine import Affine

from pipeline.config.catalog import Georeference, Source
from pipeline.config.errors import SourceError


def band_yx(array: np.ndarray, band_order: str = "auto") -> np.ndarray:
    """Return ``array`` as (band, y, x): 2-D arrays get one band; 3-D follow ``band_order``.

    ``auto`` takes the smallest axis as the band axis and, on a tie, the last one
    (MATLAB cubes are (y, x, band)).
    """
    if array.ndim == 2:
        return array[np.newaxis]
    if array.ndim != 3:
        raise ValueError(f"a 2-D or 3-D array, found {array.ndim}-D of shape {array.shape}")
    if band_order == "auto":
        band_order = "byx" if array.shape[0] < min(array.shape[1:]) else "yxb"
    return array if band_order == "byx" else np.moveaxis(array, -1, 0)


def to_dataarray(data: np.ndarray, wavelengths: list[float] | None = None) -> xr.DataArray:
    """A (band, y, x) DataArray with 1-based band numbers and pixel-index y/x (no georeference yet)."""
    bands, height, width = data.shape
    coords: dict[str, object] = {"band": np.arange(1, bands + 1)}
    da = xr.DataArray(data, dims=("band", "y", "x"), coords=coords)
    if wavelengths is not None and len(wavelengths) == bands:
        da = da.assign_coords(wavelength=("band", np.asarray(wavelengths, dtype="float64")))
    return da


def georeference(da: xr.DataArray, geo: Georeference) -> xr.DataArray:
    """Give ``da`` the declared CRS and a north-up transform from the upper-left corner and pixel size."""
    left, top = geo.origin
    res = geo.resolution
    height, width = da.sizes["y"], da.sizes["x"]
    da = da.assign_coords(
        x=left + (np.arange(width) + 0.5) * res,
        y=top - (np.arange(height) + 0.5) * res,
    )
    da = da.rio.write_crs(geo.crs)
    return da.rio.write_transform(Affine(res, 0.0, left, 0.0, -res, top))


def single_path(source: Source, where: str, what: str) -> Path:
    """The one file or store a reader of whole containers (.mat, ENVI, Zarr) takes: ``path``, not ``paths``."""
    if source.path is None:
        raise SourceError(source.files[0], f"{where}.paths", f"one {what} in 'path'", "'paths'")
    return source.path


def choose_key(path: Path, where: str, key: str | None, names: list[str], item: str, container: str) -> str:
    """The array a source names with ``key`` among ``names`` (the only one when no key is given).

    ``item``/``container`` word the error: ("array", "file") for .mat, ("variable", "store") for Zarr.
    """
    if key is None:
        if len(names) != 1:
            raise SourceError(path, f"{where}.key", f"a key naming the {item} (the {container} holds several)", f"{item}s {names}")
        return names[0]
    if key not in names:
        article = "an" if item[0] in "aeiou" else "a"
        raise SourceError(path, f"{where}.key", f"{article} {item} named {key!r} in the {container}", f"{item}s {names}")
    return key
