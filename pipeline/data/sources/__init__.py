"""Readers: one per source format, each returning an ``xarray.DataArray`` (band, y, x).

A reader returns what the file holds: its values, its CRS and transform where the
format carries them (rioxarray), and band centres (a ``wavelength`` coordinate along
``band``, nanometres) where the file lists them. :func:`read_source` adds what the
catalog declares: a georeference, wavelengths, nodata (turned into NaN).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr

from pipeline.config.catalog import Georeference, Modality, Source
from pipeline.config.errors import SourceError
from pipeline.data.sources._array import georeference as apply_georeference
from pipeline.data.sources.envi import read_envi
from pipeline.data.sources.geotiff import read_geotiff
from pipeline.data.sources.mat import read_mat
from pipeline.data.sources.zarr import read_zarr

Reader = Callable[[Source, str], xr.DataArray]

READERS: dict[str, Reader] = {
    "geotiff": read_geotiff,
    "envi": read_envi,
    "mat": read_mat,
    "zarr": read_zarr,
}

__all__ = ["READERS", "read_source", "read_geotiff", "read_envi", "read_mat", "read_zarr"]


def read_source(
    item: Modality | Source,
    georeference: Georeference | None = None,
    *,
    where: str | None = None,
) -> xr.DataArray:
    """Read a modality (or a bare source) as a (band, y, x) DataArray.

    For a :class:`Modality` the result is float32 with the declared nodata (or the
    file's) replaced by NaN, the declared georeference and wavelengths attached, and
    the band count checked against them. A bare :class:`Source` (labels) keeps its
    dtype. ``where`` is the catalog key used in error messages.
    """
    if isinstance(item, Modality):
        return _read_modality(item, where or f"modalities[{item.name!r}]")
    source = item
    da = READERS[source.format](source, where or "source")
    if georeference is not None:
        da = apply_georeference(da, georeference)
    return da


def _read_modality(modality: Modality, where: str) -> xr.DataArray:
    source = modality.source
    da = READERS[source.format](source, f"{where}.source")
    if modality.georeference is not None:
        da = apply_georeference(da, modality.georeference)
    bands = da.sizes["band"]
    file = source.files[0]
    if modality.wavelengths is not None:
        if len(modality.wavelengths) != bands:
            raise SourceError(
                file,
                f"{where}.wavelengths",
                f"{bands} values, one per band of the source",
                f"{len(modality.wavelengths)} values",
            )
        da = da.assign_coords(wavelength=("band", np.asarray(modality.wavelengths, dtype="float64")))
    if modality.band_names is not None and len(modality.band_names) != bands:
        raise SourceError(
            file, f"{where}.band_names", f"{bands} names, one per band of the source", f"{len(modality.band_names)} names"
        )
    nodata = modality.nodata if modality.nodata is not None else da.rio.nodata
    crs = da.rio.crs
    transform = da.rio.transform() if crs is not None else None
    out = da.astype("float32")  # lazy for dask-backed readers: nothing is read here
    if nodata is not None and not np.isnan(nodata):
        out = out.where(out != np.float32(nodata))
    out.attrs = {}
    out.encoding = {}
    out.name = modality.name
    out = out.rio.write_nodata(np.nan, encoded=False)
    if crs is not None:
        out = out.rio.write_crs(crs).rio.write_transform(transform)
    return out
