"""Ground truth on the scene grid: from a raster or from polygons with a class column, plus fixed splits.

Label rasters of the benchmarks (``.mat`` files) carry no georeference: one whose shape
is the scene grid's is taken to lie on that grid.
"""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import xarray as xr
from rasterio import features

from pipeline.config.catalog import Labels, Source
from pipeline.config.errors import AlignmentError, SourceError
from pipeline.data.grid import SceneGrid, align
from pipeline.data.sources import read_source
from pipeline.storage import Location, gdal_path


def _check_values(values: np.ndarray, labels: Labels, file: Location, key: str) -> np.ndarray:
    allowed = {0, *(c.value for c in labels.classes)}
    present = np.unique(values)
    unknown = [v for v in present.tolist() if v not in allowed]
    if unknown:
        raise SourceError(file, key, f"0 (unlabelled) or a class value {sorted(allowed - {0})}", f"values {unknown[:10]}")
    return values.astype("uint8")


def raster_labels(source: Source, labels: Labels, grid: SceneGrid, key: str) -> np.ndarray:
    """A label raster resampled (nearest) onto ``grid`` as uint8, 0 = unlabelled."""
    da = read_source(source, where=key)
    file = source.files[0]
    if da.sizes["band"] != 1:
        raise SourceError(file, key, "a single-band label raster", f"{da.sizes['band']} bands")
    if da.rio.crs is None:
        if (da.sizes["y"], da.sizes["x"]) != grid.shape:
            raise AlignmentError(
                file, key, f"a CRS, or the scene grid's shape {grid.shape} (then it is taken to lie on the grid)",
                f"no CRS and shape {(da.sizes['y'], da.sizes['x'])}",
            )
        da = grid.attach(da)
    values = da.values
    nodata = da.rio.nodata
    if np.issubdtype(values.dtype, np.floating):
        values = np.where(np.isnan(values), 0, values)
        if np.any(values != np.round(values)):
            raise SourceError(file, key, "integer class values", "fractional values")
    if nodata is not None and not np.isnan(nodata):
        values = np.where(values == nodata, 0, values)
    values = _check_values(values.astype("int64"), labels, file, key)
    aligned = align(da.copy(data=values).rio.write_nodata(0, encoded=False), grid, categorical=True, file=file, key=key)
    return np.asarray(aligned.values[0], dtype="uint8")


def vector_labels(path: Path, labels: Labels, grid: SceneGrid, key: str) -> np.ndarray:
    """Polygons with a class column (values or class names) rasterised onto ``grid`` as uint8."""
    if not path.is_file():
        raise SourceError(path, key, "an existing vector file of labelled polygons", "no such file")
    try:
        frame = gpd.read_file(gdal_path(path))
    except Exception as exc:  # pyogrio raises its own DataSourceError family
        raise SourceError(path, key, "a readable vector file (GeoJSON, GeoPackage, Shapefile)", f"{type(exc).__name__}: {exc}") from None
    column = labels.class_column
    if column not in frame.columns:
        raise SourceError(path, f"{key.rsplit('.', 1)[0]}.class_column", f"a column {column!r}", f"columns {list(frame.columns)}")
    if frame.crs is None:
        raise AlignmentError(path, key, "a vector file with a CRS", "none")
    by_name = {c.name.lower(): c.value for c in labels.classes}
    values = []
    for v in frame[column]:
        if isinstance(v, str) and not v.strip().isdigit():
            if v.lower() not in by_name:
                raise SourceError(path, column, f"a class name of {sorted(by_name)}", repr(v))
            values.append(by_name[v.lower()])
        else:
            values.append(int(v))
    _check_values(np.asarray(values, dtype="int64"), labels, path, column)
    frame = frame.to_crs(grid.crs)
    shapes = [(geom, value) for geom, value in zip(frame.geometry, values) if geom is not None and not geom.is_empty]
    if not shapes:
        return np.zeros(grid.shape, dtype="uint8")
    return features.rasterize(shapes, out_shape=grid.shape, transform=grid.transform, fill=0, dtype="uint8")


def scene_labels(labels: Labels, grid: SceneGrid, where: str = "labels") -> dict[str, xr.DataArray]:
    """``labels`` and, when the catalog gives fixed splits, ``train_labels``/``test_labels``: uint8 (y, x)."""
    out: dict[str, np.ndarray] = {}
    if labels.source is not None:
        out["labels"] = raster_labels(labels.source, labels, grid, f"{where}.source")
    elif labels.vector is not None:
        out["labels"] = vector_labels(labels.vector, labels, grid, f"{where}.vector")
    if labels.train is not None:
        out["train_labels"] = raster_labels(labels.train, labels, grid, f"{where}.train")
    if labels.test is not None:
        out["test_labels"] = raster_labels(labels.test, labels, grid, f"{where}.test")
    if "labels" not in out:
        combined = np.zeros(grid.shape, dtype="uint8")
        for name in ("test_labels", "train_labels"):
            if name in out:
                combined = np.where(out[name] > 0, out[name], combined)
        out["labels"] = combined
    return {name: grid.attach(xr.DataArray(values, dims=("y", "x"), name=name)) for name, values in out.items()}
