"""ENVI reader: a ``.hdr`` header beside a raw raster (read by GDAL's ENVI driver through rioxarray).

The catalog may name either the header or the raster file. Band centres come from
the header's ``wavelength`` list (converted to nanometres) when the catalog gives none.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import rasterio
import xarray as xr

from pipeline.config.catalog import Source
from pipeline.config.errors import SourceError
from pipeline.data.sources._array import single_path
from pipeline.data.sources.geotiff import check_readable, open_lazily
from pipeline.storage import is_remote, local_copy

RASTER_SUFFIXES = ("", ".img", ".dat", ".raw", ".bsq", ".bil", ".bip", ".envi")


def _header_and_raster(path: Path, where: str) -> tuple[Path, Path]:
    if path.suffix.lower() == ".hdr":
        header = path
        candidates = [path.with_suffix(s) for s in RASTER_SUFFIXES]
        raster = next((c for c in candidates if c.is_file() and c != header), None)
        if not header.is_file():
            raise SourceError(path, where, "an existing ENVI header (.hdr)", "no such file")
        if raster is None:
            raise SourceError(path, where, "an ENVI raster beside the header (same name, no suffix or .img/.dat/.raw/...)", "none")
        return header, raster
    if not path.is_file():
        raise SourceError(path, where, "an existing ENVI raster file", "no such file")
    found = next((h for h in (path.with_suffix(".hdr"), path.with_name(path.name + ".hdr")) if h.is_file()), None)
    if found is None:
        raise SourceError(path, where, f"an ENVI header {path.with_suffix('.hdr').name} beside the raster", "none")
    header = found
    return header, path


def parse_header(header: Path) -> dict[str, str]:
    """The ``key = value`` fields of an ENVI header; ``{...}`` values may span lines."""
    text = header.read_text(errors="replace")
    fields: dict[str, str] = {}
    for match in re.finditer(r"^\s*([^=\n]+?)\s*=\s*(\{[^}]*\}|[^\n]*)", text, flags=re.MULTILINE):
        fields[match.group(1).strip().lower()] = match.group(2).strip()
    return fields


def header_wavelengths(header: Path) -> list[float] | None:
    """Band centres in nanometres from the header, or None when it lists none."""
    fields = parse_header(header)
    if "wavelength" not in fields:
        return None
    values = [float(v) for v in fields["wavelength"].strip("{}").replace("\n", " ").split(",") if v.strip()]
    units = fields.get("wavelength units", "").lower()
    micrometres = units.startswith(("micro", "um", "µm")) or (not units and max(values, default=0) < 100)
    return [v * 1000.0 for v in values] if micrometres else values


def read_envi(source: Source, where: str) -> xr.DataArray:
    """Read an ENVI raster as (band, y, x), with wavelengths from its header when it lists them."""
    header, raster = _header_and_raster(single_path(source, where, "ENVI file"), f"{where}.path")
    if is_remote(raster):  # ENVI is raw bytes beside a text header: both are fetched into the local cache
        raster = local_copy(raster, None, header)
        header = raster.parent / header.name
    try:
        check_readable(raster)  # a short raw file fails here, naming it, not inside a dask task
        da = open_lazily(raster)
        wavelengths = header_wavelengths(header)
    except (rasterio.errors.RasterioError, OSError, ValueError) as exc:
        raise SourceError(raster, f"{where}.path", "a readable ENVI raster", f"{type(exc).__name__}: {exc}") from None
    if wavelengths is not None and len(wavelengths) == da.sizes["band"]:
        da = da.assign_coords(wavelength=("band", np.asarray(wavelengths, dtype="float64")))
    elif wavelengths is not None:
        raise SourceError(header, "wavelength", f"{da.sizes['band']} values, one per band", f"{len(wavelengths)} values")
    return da
