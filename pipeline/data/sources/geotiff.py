"""GeoTIFF reader: one multi-band file, or one file per band (rioxarray / rasterio).

Files are opened lazily, as dask arrays in :data:`READ_CHUNK`-pixel windows, so a
scene larger than memory streams from the file into the scene store. Every block is
read once up front (:func:`check_readable`, one window of rows at a time, nothing
kept) so a truncated or corrupt file fails here, naming the file and the catalog key,
not later inside a dask task.

A URL (``s3://``, ``gs://``, ``az://``, ``https://``) is read through GDAL's virtual file
systems (``/vsis3/``, ``/vsicurl/``, see :func:`pipeline.storage.gdal_path`) with HTTP
range requests, window by window: a remote Cloud-Optimized GeoTIFF is never downloaded
whole. The full read-back check is skipped for remote files (it would download them);
their header and one block are read instead, and a corrupt block fails when ingest reads it.
"""

from __future__ import annotations

import numpy as np
import rasterio
import rioxarray
import xarray as xr
from rasterio.windows import Window

from pipeline.config.catalog import Source
from pipeline.config.errors import SourceError
from pipeline.storage import Location, gdal_path, is_remote


def _band_wavelengths(path: Location) -> list[float] | None:
    """Band centres in nm from per-band tags: ``wavelength`` (+ ``wavelength_units``) or GDAL's IMAGERY domain."""
    with rasterio.open(gdal_path(path)) as src:
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


READ_CHUNK = 256  # pixels per side of the lazy read windows (all bands): 16 MiB for 63 float32 bands
CHECK_BYTES = 32 * 2**20  # the readability check reads windows of rows of about this size


def check_readable(path: Location | str) -> None:
    """Read every pixel of a raster once, a window of rows at a time, keeping nothing.

    Raises rasterio's error for a truncated or corrupt block. Memory stays at one
    window (about :data:`CHECK_BYTES`) whatever the file's size. A remote raster is
    opened and its first block read (reading it all would download it).
    """
    if is_remote(path):
        with rasterio.open(gdal_path(path)) as src:
            height, width = src.block_shapes[0]
            src.read(window=Window(0, 0, min(width, src.width), min(height, src.height)))
        return
    with rasterio.open(path) as src:
        row_bytes = max(1, src.width * src.count * np.dtype(src.dtypes[0]).itemsize)
        rows = max(1, min(src.height, CHECK_BYTES // row_bytes))
        for r0 in range(0, src.height, rows):
            src.read(window=Window(0, r0, src.width, min(rows, src.height - r0)))


def open_lazily(path: Location | str) -> xr.DataArray:
    """``path`` (a file or a URL) as a dask-backed (band, y, x) DataArray in :data:`READ_CHUNK` windows."""
    opened = rioxarray.open_rasterio(gdal_path(path), masked=False, chunks={"band": -1, "y": READ_CHUNK, "x": READ_CHUNK})
    if not isinstance(opened, xr.DataArray):  # a container of subdatasets (HDF, NetCDF) is no single raster
        raise ValueError(f"{path} holds several subdatasets, not one raster")
    return opened


def _read_one(path: Location, where: str) -> xr.DataArray:
    if not is_remote(path) and not path.is_file():  # a URL is checked by opening it (GDAL names the HTTP error)
        raise SourceError(path, where, "an existing GeoTIFF file", "no such file")
    try:
        check_readable(path)
        da = open_lazily(path)
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
