"""The scene grid and the alignment of every raster onto it.

Reprojection is GDAL's warp through odc-geo, for in-memory rasters (MAT) and
dask-backed ones (GeoTIFF, ENVI and Zarr are read lazily) alike: the latter are warped chunk
by chunk, so alignment never holds a whole cube.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
from affine import Affine
from odc.geo.geobox import GeoBox
from odc.geo.xr import xr_reproject
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import CRSError
from rasterio.warp import transform_bounds

from pipeline.config.catalog import Grid
from pipeline.config.errors import AlignmentError, CatalogError
from pipeline.storage import Location


@dataclass(frozen=True)
class SceneGrid:
    """A north-up pixel grid: CRS, affine transform (upper-left corner, CRS units) and shape in pixels."""

    crs: CRS
    transform: Affine
    height: int
    width: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.height, self.width

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """left, bottom, right, top in CRS units."""
        left, top = self.transform @ (0, 0)
        right, bottom = self.transform @ (self.width, self.height)
        return min(left, right), min(bottom, top), max(left, right), max(bottom, top)

    @property
    def x(self) -> np.ndarray:
        """Pixel-centre x coordinates."""
        a, b, c = self.transform[:3]
        return c + a * (np.arange(self.width) + 0.5) + b * 0.5  # along the first row of pixel centres

    @property
    def y(self) -> np.ndarray:
        """Pixel-centre y coordinates."""
        _, _, _, d, e, f = self.transform[:6]
        return f + d * 0.5 + e * (np.arange(self.height) + 0.5)  # along the first column of pixel centres

    def on_grid(self, da: xr.DataArray) -> bool:
        """Whether ``da`` already lies exactly on this grid (no resampling needed)."""
        return (
            da.rio.crs == self.crs
            and da.rio.shape == self.shape
            and da.rio.transform().almost_equals(self.transform, precision=1e-6 * abs(self.transform.a))
        )

    def attach(self, da: xr.DataArray) -> xr.DataArray:
        """Give a (..., y, x) array of this grid's shape the grid's coordinates, CRS and transform."""
        da = da.assign_coords(x=self.x, y=self.y)
        return da.rio.write_crs(self.crs).rio.write_transform(self.transform)


def _parse_crs(text: str, file: Path | None, key: str) -> CRS:
    try:
        return CRS.from_user_input(text)
    except CRSError as exc:
        raise CatalogError(file, key, "a CRS such as 'EPSG:32632'", f"{text!r} ({exc})") from None


def scene_grid(grid: Grid, modalities: dict[str, xr.DataArray], catalog_file: Path | None = None) -> SceneGrid:
    """The grid of a scene: the one of ``grid.from_modality``, or the declared CRS, resolution and bounds."""
    if grid.from_modality is not None:
        da = modalities[grid.from_modality]
        if da.rio.crs is None:
            raise AlignmentError(
                catalog_file,
                f"modalities[{grid.from_modality!r}].georeference",
                "a CRS in the file or a declared georeference (the grid is taken from this modality)",
                "none",
            )
        return SceneGrid(CRS.from_user_input(da.rio.crs), da.rio.transform(), da.rio.height, da.rio.width)
    assert grid.crs is not None and grid.resolution is not None and grid.bounds is not None
    left, bottom, right, top = grid.bounds
    if right <= left or top <= bottom:
        raise CatalogError(catalog_file, "grid.bounds", "left < right and bottom < top", f"{grid.bounds}")
    res = grid.resolution
    width = max(1, math.ceil((right - left) / res - 1e-9))
    height = max(1, math.ceil((top - bottom) / res - 1e-9))
    return SceneGrid(_parse_crs(grid.crs, catalog_file, "grid.crs"), Affine(res, 0.0, left, 0.0, -res, top), height, width)


def _overlap(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> bool:
    return min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1])


def align(
    da: xr.DataArray,
    grid: SceneGrid,
    *,
    categorical: bool = False,
    file: Location | None = None,
    key: str = "",
) -> xr.DataArray:
    """Put ``da`` (band, y, x) on ``grid``: bilinear for continuous values, nearest for labels and masks.

    Continuous data come back float32 with NaN outside the source; categorical data keep
    their dtype with 0 outside. A raster without CRS, or one that does not overlap the
    grid, raises AlignmentError naming ``file`` and ``key``.
    """
    if da.rio.crs is None:
        raise AlignmentError(file, key, "a CRS in the file or a declared georeference", "none")
    if grid.on_grid(da):
        return grid.attach(da)
    bounds = transform_bounds(da.rio.crs, grid.crs, *da.rio.bounds(), densify_pts=21)
    if not _overlap(bounds, grid.bounds):
        raise AlignmentError(
            file,
            key,
            f"an extent overlapping the scene grid {tuple(round(v, 3) for v in grid.bounds)} in {grid.crs}",
            f"extent {tuple(round(v, 3) for v in bounds)}",
        )
    fill: float
    if categorical:
        fill = 0
        resampling = Resampling.nearest
    else:
        da = da.astype("float32")
        fill = np.nan
        resampling = Resampling.bilinear
    return grid.attach(_reproject(da, grid, resampling, fill))


def _reproject(da: xr.DataArray, grid: SceneGrid, resampling: Resampling, fill: float) -> xr.DataArray:
    """GDAL warp through odc-geo; a dask-backed raster is warped lazily, chunk by chunk (each output chunk
    reads only the source window it needs), so a scene larger than memory streams through alignment."""
    box = GeoBox(grid.shape, grid.transform, grid.crs.to_wkt())
    out = xr_reproject(da, box, resampling=resampling.name, src_nodata=fill, dst_nodata=fill)
    out.attrs = {k: v for k, v in out.attrs.items() if k not in ("nodata", "_FillValue")}
    return out.drop_vars([c for c in out.coords if c not in ("band", "y", "x", "wavelength")])
