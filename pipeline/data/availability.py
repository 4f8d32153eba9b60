"""Per-pixel, per-modality availability, from the data and from the catalog's metadata.

A pixel is available for a modality when all its bands hold a value (finite and
not the modality's nodata), no applicable cloud covers it, and no sensor-failure
record takes the modality out there. ``scene_availability`` combines the three
into the ``available`` variable of the scene store (layout in ``pipeline.data.store``);
``pattern_codes`` turns it into the per-pixel pattern code mapping and reports use.

Inside a patch, neighbours whose modality is unavailable are zero-filled by
``pipeline.data.patches.normalise_window``; the sample's pattern is that of the patch
centre (``pipeline.data.patches.extract_patches``).

Units: every mask is on the scene grid, one value per pixel; polygons are
rasterised by pixel centre (a pixel is covered when its centre is inside).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio.errors
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
from pyogrio.errors import DataLayerError, DataSourceError
from pyproj.exceptions import CRSError
from rasterio.enums import Resampling
from rasterio.features import rasterize

from models.patterns import (
    MAX_MODALITIES,
    complete_pattern,
    pattern_name,
    pattern_weights,
)
from pipeline.config.catalog import (
    OPTICAL_KINDS,
    CloudMask,
    Modality,
    Scene,
    SensorFailure,
)
from pipeline.config.errors import AlignmentError, InputError
from pipeline.storage import gdal_path

# --------------------------------------------------------------------------- the grid


def _grid_template(like: xr.DataArray, key: str, file: Path | None = None) -> xr.DataArray:
    """A 2-D (y, x) float template of ``like``'s grid, with its CRS and transform."""
    if like.rio.crs is None:
        raise AlignmentError(file, key, "scene cubes with a CRS (rioxarray .rio.crs)", "no CRS")
    template = xr.DataArray(
        np.zeros((like.sizes["y"], like.sizes["x"]), dtype=np.float32),
        coords={"y": like["y"].values, "x": like["x"].values},
        dims=("y", "x"),
    )
    template = template.rio.write_crs(like.rio.crs)
    return template.rio.write_transform(like.rio.transform())


def _mask_like(values: np.ndarray, like: xr.DataArray, name: str) -> xr.DataArray:
    """A bool (y, x) DataArray on ``like``'s grid."""
    mask = xr.DataArray(values.astype(bool), coords={"y": like["y"], "x": like["x"]}, dims=("y", "x"), name=name)
    return mask.rio.write_crs(like.rio.crs)


# --------------------------------------------------------------------------- polygons


def _read_polygons(path: Path, fallback_crs: str | None, key: str) -> gpd.GeoDataFrame:
    """Read polygons with geopandas; the frame has a CRS (the file's, else ``fallback_crs``)."""
    if not path.exists():
        raise InputError(path, key, "an existing vector file (GeoJSON, GeoPackage, Shapefile)", "no such file")
    try:
        frame = gpd.read_file(gdal_path(path))
    except (DataSourceError, DataLayerError, OSError, ValueError) as exc:
        raise InputError(path, key, "a vector file geopandas can read", str(exc)) from exc
    frame = frame[frame.geometry.notna() & ~frame.geometry.is_empty]
    if frame.empty:
        return frame
    kinds = set(frame.geometry.geom_type)
    if not kinds <= {"Polygon", "MultiPolygon"}:
        raise InputError(path, key, "Polygon or MultiPolygon geometries", f"{sorted(kinds)}")
    if frame.crs is None:
        if fallback_crs is None:
            raise InputError(path, key, "a vector file with a CRS (or a 'crs' for it in the catalog)", "no CRS")
        try:
            frame = frame.set_crs(fallback_crs)
        except CRSError as exc:
            raise InputError(path, key, "a valid CRS for the vector file", repr(fallback_crs)) from exc
    return frame


def _rasterise_polygons(frame: gpd.GeoDataFrame, like: xr.DataArray) -> np.ndarray:
    """Burn polygons onto ``like``'s grid: True where a pixel centre is inside (``all_touched=False``)."""
    shape = (like.sizes["y"], like.sizes["x"])
    if frame.empty:
        return np.zeros(shape, dtype=bool)
    frame = frame.to_crs(like.rio.crs)
    burned = rasterize(
        ((geom, 1) for geom in frame.geometry),
        out_shape=shape,
        transform=like.rio.transform(),
        fill=0,
        all_touched=False,
        dtype="uint8",
    )
    return burned.astype(bool)


# --------------------------------------------------------------------------- clouds


def _read_cloud_raster(cloud: CloudMask, like: xr.DataArray, key: str) -> np.ndarray:
    """Resample a cloud raster onto the grid and return True where cloudy.

    A raster holding only 0 and 1 (or bool) is a mask: nearest-neighbour keeps its
    values 0/1 (interpolating a mask would invent fractions). Any other raster is a
    cloud probability (0-1, or 0-100 with a threshold to match): bilinear
    resampling gives a smooth estimate of the probability at the target pixel
    centre, which is then compared with ``cloud.threshold`` (cloud where
    ``probability > threshold``). Pixels outside the raster, or on its nodata,
    carry no evidence of cloud and count as clear.
    """
    path = cloud.path
    if not path.exists():
        raise InputError(path, key, "an existing cloud raster", "no such file")
    try:
        opened = rioxarray.open_rasterio(gdal_path(path), masked=True)
    except (rasterio.errors.RasterioError, OSError, ValueError) as exc:
        raise InputError(path, key, "a raster rasterio can read", str(exc)) from exc
    if not isinstance(opened, xr.DataArray):
        raise InputError(path, key, "a single raster (not a multi-subdataset file)", type(opened).__name__)
    with opened as raster:
        if raster.sizes.get("band", 1) != 1:
            raise InputError(path, key, "a single-band cloud raster", f"{raster.sizes['band']} bands")
        raster = raster.squeeze("band", drop=True).astype(np.float32).load()
    if raster.rio.crs is None:
        if cloud.crs is None:
            raise InputError(path, key, "a cloud raster with a CRS (or a 'crs' for it in the catalog)", "no CRS")
        raster = raster.rio.write_crs(cloud.crs)
    values = np.asarray(raster.values)
    finite = values[np.isfinite(values)]
    is_mask = bool(np.all((finite == 0) | (finite == 1)))
    raster = raster.rio.write_nodata(np.nan, encoded=False)
    try:
        resampled = raster.rio.reproject_match(
            like, resampling=Resampling.nearest if is_mask else Resampling.bilinear, nodata=np.nan
        )
    except (rasterio.errors.RasterioError, CRSError, ValueError) as exc:
        raise InputError(path, key, "a cloud raster that can be reprojected onto the scene grid", str(exc)) from exc
    result = resampled.values
    if not np.isfinite(result).any():
        raise InputError(path, key, "a cloud raster that overlaps the scene", "no overlap with the scene grid")
    with np.errstate(invalid="ignore"):
        return (result == 1) if is_mask else (result > cloud.threshold)


def cloud_mask(cloud: CloudMask, like: xr.DataArray, key: str = "availability.clouds[0]") -> xr.DataArray:
    """Where ``cloud`` covers ``like``'s grid: a bool (y, x) DataArray, True = cloud.

    Args:
        cloud: the catalog entry; a raster (mask or probability) or vector polygons.
        like: any array on the scene grid (dims ending in y, x; CRS and transform via ``.rio``).
        key: the catalog key of the entry, to name it in errors (``.path`` is appended).

    Raises:
        InputError: the file is missing or unreadable, has no CRS and the entry gives
            none, or (raster) does not overlap the scene.
    """
    path_key = f"{key}.path"
    template = _grid_template(like, path_key, cloud.path)
    if cloud.resolved_type == "vector":
        frame = _read_polygons(cloud.path, cloud.crs, path_key)
        values = _rasterise_polygons(frame, template)
    else:
        values = _read_cloud_raster(cloud, template, path_key)
    return _mask_like(values, template, "cloud")


def cloud_targets(cloud: CloudMask, scene: Scene) -> list[str]:
    """The modalities a cloud mask hides: ``applies_to``, else the optical ones (HS, MSI)."""
    if cloud.applies_to is not None:
        return list(cloud.applies_to)
    return [m.name for m in scene.modalities if m.kind in OPTICAL_KINDS]


# --------------------------------------------------------------------------- sensor failures


def _utc(t: dt.datetime) -> dt.datetime:
    """Naive times are taken as UTC, so naive and aware times compare."""
    return t.replace(tzinfo=dt.timezone.utc) if t.tzinfo is None else t.astimezone(dt.timezone.utc)


def failure_applies(failure: SensorFailure, modality: Modality, key: str = "availability.failures[0]") -> bool:
    """Whether ``failure`` concerns this acquisition: always without a window, else ``acquired`` in [start, end]."""
    if failure.start is None or failure.end is None:
        return True
    if modality.acquired is None:
        raise InputError(
            None,
            f"modalities[{modality.name!r}].acquired",
            f"an acquisition time, to compare with the failure window of {key} ({failure.start} - {failure.end})",
            "none",
        )
    return _utc(failure.start) <= _utc(modality.acquired) <= _utc(failure.end)


def failure_mask(
    failure: SensorFailure, modality: Modality, like: xr.DataArray, key: str = "availability.failures[0]"
) -> xr.DataArray:
    """Where ``failure`` takes ``modality`` out: a bool (y, x) DataArray, True = out.

    No footprint and no window: the whole modality is out. A footprint: out inside
    its polygons. A window: the record applies only when the modality's
    ``acquired`` time lies in [start, end] (inclusive); footprint and window combine.
    """
    template = _grid_template(like, key)
    shape = (template.sizes["y"], template.sizes["x"])
    if not failure_applies(failure, modality, key):
        return _mask_like(np.zeros(shape, dtype=bool), template, "failure")
    if failure.footprint is None:
        return _mask_like(np.ones(shape, dtype=bool), template, "failure")
    frame = _read_polygons(failure.footprint, None, f"{key}.footprint")
    return _mask_like(_rasterise_polygons(frame, template), template, "failure")


# --------------------------------------------------------------------------- the scene


def valid_data(cube: xr.DataArray, nodata: float | None) -> xr.DataArray:
    """Pixels where every band holds a value: finite, and not ``nodata``. Lazy on dask."""
    valid: xr.DataArray = xr.apply_ufunc(np.isfinite, cube, dask="allowed")
    if nodata is not None and np.isfinite(nodata):
        valid = valid & (cube != nodata)
    if cube.ndim == 3:
        valid = valid.all(dim=str(cube.dims[0]))
    return valid


def scene_availability(
    modalities: dict[str, xr.DataArray], scene: Scene, catalog_file: Path | None = None
) -> xr.DataArray:
    """Per-pixel, per-modality availability of a scene.

    Args:
        modalities: the modality cubes aligned on the scene grid, (band, y, x) float
            with NaN where no value; CRS via ``.rio``. Dask-backed cubes stay lazy.
        scene: the catalog scene (modalities in catalog order, clouds, failures).
        catalog_file: the catalog file, to name it in errors.

    Returns:
        bool DataArray (modality, y, x), ``modality`` coordinate in catalog order,
        the grid's y/x coordinates and CRS; True = available.
    """
    names = scene.modality_names
    prefix = f"scenes[{scene.name!r}]"
    if len(names) > MAX_MODALITIES:
        raise InputError(catalog_file, f"{prefix}.modalities", f"at most {MAX_MODALITIES} modalities", str(len(names)))
    for name in names:
        if name not in modalities:
            raise AlignmentError(catalog_file, f"{prefix}.modalities[{name!r}]", "an aligned cube", "none given")
    reference = modalities[names[0]]
    template = _grid_template(reference, f"{prefix}.grid", catalog_file)
    for name in names[1:]:
        cube = modalities[name]
        if cube.sizes.get("y") != reference.sizes["y"] or cube.sizes.get("x") != reference.sizes["x"]:
            raise AlignmentError(
                catalog_file,
                f"{prefix}.modalities[{name!r}]",
                f"a cube on the scene grid ({reference.sizes['y']} x {reference.sizes['x']} pixels)",
                f"{cube.sizes.get('y')} x {cube.sizes.get('x')}",
            )

    hidden = {name: np.zeros((template.sizes["y"], template.sizes["x"]), dtype=bool) for name in names}
    for i, cloud in enumerate(scene.availability.clouds):
        mask = cloud_mask(cloud, template, f"{prefix}.availability.clouds[{i}]").values
        for name in cloud_targets(cloud, scene):
            hidden[name] |= mask
    for i, failure in enumerate(scene.availability.failures):
        key = f"{prefix}.availability.failures[{i}]"
        modality = scene.modality(failure.modality)
        if failure.start is not None and modality.acquired is None:
            raise InputError(
                catalog_file,
                f"{prefix}.modalities[{modality.name!r}].acquired",
                f"an acquisition time, to compare with the failure window of {key}",
                "none",
            )
        hidden[failure.modality] |= failure_mask(failure, modality, template, key).values

    layers = []
    for name in names:
        cube = modalities[name]
        valid = valid_data(cube, scene.modality(name).nodata).drop_vars(
            [c for c in cube.coords if c not in ("y", "x")], errors="ignore"
        )
        valid = valid.assign_coords(y=template["y"], x=template["x"])
        layers.append(valid & ~xr.DataArray(hidden[name], coords=valid.coords, dims=("y", "x")))
    available = xr.concat(layers, dim=xr.DataArray(names, dims="modality", name="modality"))
    available = available.transpose("modality", "y", "x").rename("available")
    return available.rio.write_crs(template.rio.crs).rio.write_transform(template.rio.transform())


# --------------------------------------------------------------------------- patterns


def pattern_codes(available: xr.DataArray) -> xr.DataArray:
    """The availability pattern of each pixel: uint8 (y, x), bit i set when modality i is available.

    Lazy when ``available`` is dask-backed. 0 means nothing is available (nodata in the map).
    """
    weights = xr.DataArray(
        np.asarray(pattern_weights(available.sizes["modality"]), dtype=np.uint8),
        coords={"modality": available["modality"]}, dims="modality",
    )
    codes = (available.astype(np.uint8) * weights).sum("modality", dtype=np.uint8).rename("pattern")
    if available.rio.crs is not None:
        codes = codes.rio.write_crs(available.rio.crs)
    return codes


def pattern_counts(codes: xr.DataArray | np.ndarray, modalities: list[str]) -> dict[str, int]:
    """Pixels per pattern, every one of the 2^M patterns in code order: {'none': .., 'hs': .., 'hs+lidar': ..}."""
    data = codes.data if isinstance(codes, xr.DataArray) else np.asarray(codes)
    size = complete_pattern(len(modalities)) + 1
    if hasattr(data, "dask"):  # a dask array: the counts are the result asked for, so compute them here
        import dask.array as da

        counts = da.bincount(data.ravel().astype(np.int64), minlength=size).compute()
    else:
        counts = np.bincount(np.asarray(data).ravel().astype(np.int64), minlength=size)
    if len(counts) > size:
        raise ValueError(f"pattern code {len(counts) - 1} is beyond the {len(modalities)} modalities {modalities}")
    return {pattern_name(code, modalities): int(counts[code]) for code in range(size)}
