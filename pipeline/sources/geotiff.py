"""GeoTIFF reader: one multi-band file, or one file per band (rioxarray / rasterio)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
import rioxarray
import xarray as xr

from pipeline.catalog import Source
from pipeline.errors import SourceError


def _band_wavelengths(path: Path) -> list[float] | None:
    """Band centres in nm from per-band tags: ``wavelength`` (+ ``wavelength_units``) or GDAL's IMAGERY domain."""
    with rasterio.open(path) as src:
        values: list[float] = []
        for band in range(1, src.count + 1):
            tags = src.tags(band)
            imagery = src.tags(band, ns="IMAGERY")
            if "wavelength" in tags:
                value = float(tags["wavelength"])
                units = tags.get("wavelength_units", "nm").lower()
                values.append(value * 1000.0 if units.startswith(("micro", "um", "µm")) else value)
            elif "CENTRAL_WAVELENGTH_UM" in imagery:
                values.append(float(imagery["CENTRAL_WAVELENGTH_UM"]) * 1000.0)
            else:
                return None
    return values


def _read_one(path: Path, where: str) -> xr.DataArray:
    if not path.is_file():
        raise SourceError(path, where, "an existing GeoTIFF file", "no such file")
    try:
        da = rioxarray.open_rasterio(path, masked=False)
        # Read the pixels now: a truncated or corrupt file only fails when its blocks are read.
        da = da.load()
        wavelengths = _band_wavelengths(path)
    except (rasterio.errors.RasterioError, OSError, ValueError) as exc:
        raise SourceError(path, where, "a readable GeoTIFF", f"{type(exc).__name__}: {exc}") from None
    if isinstance(da, list) or "band" not in da.dims:
        raise SourceError(path, where, "a single raster (band, y, x)", "a multi-dataset file")
    if wavelengths is not None:
        da = da.assign_coords(wavelength=("band", np.asarray(wavelengths, dtype="float64")))
    return da


def read_geotiff(source: Source, where: str) -> xr.DataArray:
    """Read ``source.path`` (all bands) or ``source.paths`` (stacked in order) as (band, y, x)."""
    arrays = [_read_one(path, f"{where}.path" if source.path else f"{where}.paths[{i}]") for i, path in enumerate(source.files)]
    if len(arrays) == 1:
        return arrays[0]
    first = arrays[0]
    for i, (path, da) in enumerate(zip(source.files, arrays)):
        same_grid = (
            da.rio.shape == first.rio.shape
            and da.rio.crs == first.rio.crs
            and da.rio.transform().almost_equals(first.rio.transform())
        )
        if not same_grid:
            raise SourceError(
                path,
                f"{where}.paths[{i}]",
                f"the grid of {source.files[0].name} (shape {first.rio.shape}, {first.rio.crs})",
                f"shape {da.rio.shape}, {da.rio.crs}",
            )
    wavelength_known = all("wavelength" in da.coords for da in arrays)
    stacked = xr.concat([da.drop_vars("wavelength", errors="ignore") for da in arrays], dim="band", join="override")
    stacked = stacked.assign_coords(band=np.arange(1, stacked.sizes["band"] + 1))
    if wavelength_known:
        stacked = stacked.assign_coords(wavelength=("band", np.concatenate([da["wavelength"].values for da in arrays])))
    return stacked.rio.write_crs(first.rio.crs).rio.write_transform(first.rio.transform())
