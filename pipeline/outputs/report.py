"""The run report: what was mapped (pixels and hectares per class, pixels per availability
pattern), how long each stage took, how accurate the map is on held-out pixels, with which
inputs and software; written as JSON, as a STAC 1.0.0 Item, and as a one-screen summary.

Pixel counts are histograms computed chunk by chunk with Dask, so the map is never loaded whole.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import re
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import rasterio
import xarray as xr
from affine import Affine
from pyproj import CRS as ProjCRS
from pyproj import Transformer
from rasterio.crs import CRS
from upath import UPath

from models.patterns import pattern_name
from pipeline import __version__ as PIPELINE_VERSION
from pipeline.config.errors import InputError
from pipeline.data.store import CLASS_NODATA, PATTERN_NODATA
from pipeline.files import write_text
from pipeline.outputs.cog import (
    BAND_DESCRIPTIONS,
    CLASS_VAR,
    PATTERN_VAR,
    class_table,
    map_georeference,
    map_variable,
    modality_names,
    pattern_colors,
)
from pipeline.storage import Location, as_location, gdal_path, is_remote, local_path, url

STAC_VERSION = "1.0.0"
PROJECTION_EXTENSION = "https://stac-extensions.github.io/projection/v1.1.0/schema.json"
CLASSIFICATION_EXTENSION = "https://stac-extensions.github.io/classification/v1.1.0/schema.json"
COG_MEDIA_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"
ASSET_KINDS = {  # suffix -> (media type, roles)
    ".tif": (COG_MEDIA_TYPE, ["data"]),
    ".tiff": (COG_MEDIA_TYPE, ["data"]),
    ".png": ("image/png", ["overview"]),
    ".html": ("text/html", ["visual"]),  # the interactive web map (map.html)
    ".json": ("application/json", ["metadata"]),
    ".qml": ("text/xml", ["metadata"]),
}
VERSIONED_DISTRIBUTIONS = {  # report key -> distribution name
    "torch": "torch", "numpy": "numpy", "xarray": "xarray", "rioxarray": "rioxarray", "rasterio": "rasterio",
    "zarr": "zarr", "dask": "dask", "open_clip": "open_clip_torch", "pipeline": "mmlandcover",
}
HISTOGRAM_CHUNK = 2048


# --------------------------------------------------------------------------- report


def build_report(
    map_ds: xr.Dataset,
    *,
    scene_name: str,
    catalog_hash: str,
    checkpoint_hash: str,
    method: str,
    timings: Mapping[str, float],
    accuracy: dict | None,
    availability_note: list[str],
    versions: dict | None = None,
    outputs: Mapping[str, str],
) -> dict:
    """The JSON-ready report of one mapped scene.

    Args:
        map_ds: the map store (``class``, ``pattern`` and attrs as in :mod:`pipeline.data.store`).
        timings: seconds per stage.
        accuracy: a :func:`pipeline.learn.metrics.classification_summary` on held-out pixels, or None;
            with ``patterns`` and ``footprints``: OA/AA/kappa per availability pattern and per footprint
            of the catalog's clouds and failures (``pipeline.run.held_out_accuracy``).
        availability_note: human-readable lines on what was missing and why.
        versions: software versions; collected from the installed distributions when None.
        outputs: name -> path of every file written.
    """
    class_counts, pattern_counts = _histograms(map_ds)
    crs, transform = map_georeference(map_ds)
    classes = class_table(map_ds)
    names = modality_names(map_ds)
    area_m2, area_note = pixel_area_m2(crs, transform)

    unknown = sorted(set(np.flatnonzero(class_counts).tolist()) - {int(c["value"]) for c in classes} - {CLASS_NODATA})
    if unknown:
        raise InputError(map_ds.encoding.get("source"), CLASS_VAR,
                         f"class values in attrs.classes {[int(c['value']) for c in classes]} or {CLASS_NODATA}",
                         f"values {unknown}")

    def hectares(pixels: int) -> float | None:
        return None if area_m2 is None else pixels * area_m2 / 1e4

    per_class = [
        {"value": int(c["value"]), "name": str(c["name"]), "color": c["color"],
         "pixels": int(class_counts[int(c["value"])]), "hectares": hectares(int(class_counts[int(c["value"])]))}
        for c in classes
    ]
    per_pattern = [
        {"code": code, "name": pattern_name(code, names), "pixels": int(pattern_counts[code])}
        for code in np.flatnonzero(pattern_counts).tolist()
    ]
    height, width = map_ds.sizes["y"], map_ds.sizes["x"]
    mapped = int(class_counts.sum() - class_counts[CLASS_NODATA])
    return {
        "scene": scene_name,
        "method": method,
        "created": _now(),
        "grid": {
            "crs": crs.to_string(),
            "transform": list(transform)[:6],
            "shape": [height, width],
            "pixel_area_m2": area_m2,
            "area_note": area_note,
        },
        "pixels": {"total": height * width, "mapped": mapped, "nodata": int(class_counts[CLASS_NODATA])},
        "mapped_hectares": hectares(mapped),
        "classes": per_class,
        "patterns": per_pattern,
        "modalities": names,
        "timings_s": {stage: float(seconds) for stage, seconds in timings.items()},
        "accuracy": accuracy,
        "availability_note": list(availability_note),
        "hashes": {"catalog": catalog_hash, "checkpoint": checkpoint_hash},
        "versions": versions if versions is not None else collect_versions(),
        "outputs": {name: str(target) for name, target in outputs.items()},
    }


def _histograms(map_ds: xr.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Pixel counts per value 0..255 of ``class`` and ``pattern``, chunk by chunk, in one Dask compute."""
    histograms = []
    for name in (CLASS_VAR, PATTERN_VAR):
        variable = map_variable(map_ds, name, "uint8")
        data = variable.data if isinstance(variable.data, da.Array) else variable.chunk(
            {"y": HISTOGRAM_CHUNK, "x": HISTOGRAM_CHUNK}).data
        histograms.append(da.histogram(data, bins=256, range=(0, 256))[0])
    class_counts, pattern_counts = dask.compute(*histograms)
    return class_counts.astype(np.int64), pattern_counts.astype(np.int64)


def pixel_area_m2(crs: CRS, transform: Affine) -> tuple[float | None, str]:
    """Area of one pixel in square metres, and a note; None when the CRS is geographic (degrees)."""
    proj = ProjCRS.from_user_input(crs.to_wkt())
    if proj.is_geographic:
        return None, "CRS is geographic (degrees): area unknown"
    to_metres = proj.axis_info[0].unit_conversion_factor if proj.axis_info else 1.0
    area = abs(transform.a * transform.e - transform.b * transform.d) * to_metres**2
    return float(area), f"pixel area from the transform, CRS units {proj.axis_info[0].unit_name}"


def collect_versions() -> dict[str, str | None]:
    """Python, GDAL and the installed versions of the packages that shape the result (None if absent)."""
    versions: dict[str, str | None] = {"python": platform.python_version(), "gdal": rasterio.__gdal_version__}
    for key, distribution in VERSIONED_DISTRIBUTIONS.items():
        try:
            versions[key] = metadata.version(distribution)
        except metadata.PackageNotFoundError:
            versions[key] = None
    if versions["pipeline"] is None:
        versions["pipeline"] = PIPELINE_VERSION
    return versions


def write_report(report: dict, path: Location) -> Location:
    """Write the report as JSON (strict: NaN is refused), atomically."""
    return _write_json(report, path)


def _write_json(document: dict, path: Location) -> Location:
    return write_text(path, json.dumps(document, indent=2, allow_nan=False, default=_json_default) + "\n")


def _json_default(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (Path, UPath)):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


# --------------------------------------------------------------------------- STAC


def write_stac_item(report: dict, map_ds: xr.Dataset, path: Location, assets: Mapping[str, Location],
                    acquired: dt.datetime | None = None, published_in: Location | None = None) -> Location:
    """Write a STAC 1.0.0 Item (projection and classification extensions) describing the outputs.

    Asset hrefs are relative to the item's folder (the object URLs when the outputs are on an object store). The class and pattern COGs (recognised by
    their band description, else by the asset names ``class`` and ``pattern``) carry
    ``classification:classes``. The item's datetime is ``acquired`` when given, else the
    acquisition times in the map's ``modalities`` attrs (a start/end range when they differ),
    else now.

    ``published_in``: the folder the item and its assets will be published in, when they are written
    into a staging folder first (hrefs then name the published files: object URLs on a store).
    """
    path = as_location(path)
    return _write_json(stac_item(report, map_ds, path.parent, assets, acquired, published_in), path)


def stac_item(report: dict, map_ds: xr.Dataset, folder: Location, assets: Mapping[str, Location],
              acquired: dt.datetime | None = None, published_in: Location | None = None) -> dict:
    """The STAC Item dict of :func:`write_stac_item`; hrefs relative to ``folder``."""
    crs, transform = map_georeference(map_ds)
    height, width = map_ds.sizes["y"], map_ds.sizes["x"]
    ring = footprint_lonlat(crs, transform, width, height)
    lons, lats = zip(*ring)
    properties = {
        **_item_datetimes(map_ds, acquired),
        "created": report.get("created", _now()),
        "title": f"{report['scene']} land cover ({report['method']})",
        "proj:epsg": crs.to_epsg(),
        "proj:shape": [height, width],
        "proj:transform": list(transform)[:6],
    }
    if properties["proj:epsg"] is None:
        properties["proj:wkt2"] = ProjCRS.from_user_input(crs.to_wkt()).to_wkt()
    item = {
        "type": "Feature",
        "stac_version": STAC_VERSION,
        "stac_extensions": [PROJECTION_EXTENSION, CLASSIFICATION_EXTENSION],
        "id": _stac_id(report["scene"]),
        "geometry": {"type": "Polygon", "coordinates": [[list(p) for p in ring]]},
        "bbox": [min(lons), min(lats), max(lons), max(lats)],
        "properties": properties,
        "links": [],
        "assets": {name: _stac_asset(name, as_location(target), as_location(folder), map_ds, published_in)
                   for name, target in assets.items()},
    }
    validate_stac_item(item)
    return item


def footprint_lonlat(crs: CRS, transform: Affine, width: int, height: int,
                     points_per_edge: int = 8) -> list[tuple[float, float]]:
    """The grid's outline in EPSG:4326 (lon, lat), densified along each edge, closed, counter-clockwise."""
    steps = np.linspace(0.0, 1.0, points_per_edge, endpoint=False)
    cols = np.concatenate([steps * width, np.full_like(steps, width), (1 - steps) * width, np.zeros_like(steps)])
    rows = np.concatenate([np.zeros_like(steps), steps * height, np.full_like(steps, height), (1 - steps) * height])
    xs = transform.a * cols + transform.b * rows + transform.c
    ys = transform.d * cols + transform.e * rows + transform.f
    to_lonlat = Transformer.from_crs(ProjCRS.from_user_input(crs.to_wkt()), "EPSG:4326", always_xy=True)
    lons, lats = to_lonlat.transform(xs, ys)
    ring = [(float(lon), float(lat)) for lon, lat in zip(lons, lats)]
    ring.append(ring[0])
    signed_area = sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(ring[:-1], ring[1:]))
    return ring if signed_area > 0 else ring[::-1]


def _item_datetimes(map_ds: xr.Dataset, acquired: dt.datetime | None) -> dict:
    if acquired is not None:
        return {"datetime": _iso(acquired)}
    seen: set[str] = set()
    for modality in map_ds.attrs.get("modalities", []):
        if isinstance(modality, Mapping) and modality.get("acquired"):
            try:
                text = str(modality["acquired"]).replace("Z", "+00:00")  # Python < 3.11 refuses 'Z'
                seen.add(_iso(dt.datetime.fromisoformat(text)))
            except ValueError as error:
                raise InputError(map_ds.encoding.get("source"), "attrs.modalities[].acquired",
                                 "an ISO 8601 time", repr(modality["acquired"])) from error
    times = sorted(seen)
    if len(times) == 1:
        return {"datetime": times[0]}
    if times:
        return {"datetime": None, "start_datetime": times[0], "end_datetime": times[-1]}
    return {"datetime": _now()}


def _iso(moment: dt.datetime) -> str:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    return moment.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z")


def _stac_id(scene: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", scene).strip("-") or "scene"


def _stac_asset(name: str, target: Location, folder: Location, map_ds: xr.Dataset,
                published_in: Location | None = None) -> dict:
    kind = ASSET_KINDS.get(target.suffix.lower())
    if kind is None:
        raise ValueError(f"asset {name!r}: {target.name} has no known media type "
                         f"(expected a suffix in {sorted(ASSET_KINDS)})")
    media_type, roles = kind
    if published_in is not None:  # staged beside the item: the published file is the asset
        href = url(as_location(published_in) / target.name) if is_remote(as_location(published_in)) else target.name
    elif is_remote(target):
        href = url(target)
    else:
        href = Path(os.path.relpath(local_path(target), local_path(folder))).as_posix()
    asset: dict[str, Any] = {"href": href, "type": media_type,
             "title": name, "roles": list(roles)}
    layer = _map_layer(name, target)
    if layer == CLASS_VAR:
        asset["classification:classes"] = [
            _stac_class(CLASS_NODATA, "nodata", "no modality available", None, nodata=True),
            *(_stac_class(int(c["value"]), str(c["name"]), str(c["name"]), c["color"]) for c in class_table(map_ds)),
        ]
    elif layer == PATTERN_VAR:
        names = modality_names(map_ds)
        asset["classification:classes"] = [
            _stac_class(PATTERN_NODATA, "none", "no modality available", None, nodata=True),
            *(_stac_class(code, pattern_name(code, names), f"available: {pattern_name(code, names)}",
                          "#{:02x}{:02x}{:02x}".format(*rgba[:3])) for code, rgba in pattern_colors(len(names)).items()),
        ]
    return asset


def _map_layer(name: str, target: Location) -> str:
    """Which map variable a GeoTIFF asset holds: from its band description, else from the asset name."""
    if target.suffix.lower() in (".tif", ".tiff") and target.exists():
        with rasterio.open(gdal_path(target)) as src:
            description = src.descriptions[0]
        for variable, known in BAND_DESCRIPTIONS.items():
            if description == known:
                return variable
    return name


def _stac_class(value: int, name: str, description: str, color: str | None, nodata: bool = False) -> dict:
    """A classification v1.1.0 class object: value and description required, name machine-readable."""
    entry: dict = {"value": value, "name": re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_") or f"class_{value}",
                   "description": description}
    if color is not None:
        entry["color_hint"] = color.lstrip("#").upper()
    if nodata:
        entry["nodata"] = True
    return entry


def validate_stac_item(item: dict) -> None:
    """Check the structure a STAC 1.0.0 Item needs; raise ValueError naming the first problem."""
    problems = []
    for key in ("type", "stac_version", "id", "geometry", "bbox", "properties", "links", "assets"):
        if key not in item:
            problems.append(f"missing '{key}'")
    if item.get("type") != "Feature":
        problems.append("type must be 'Feature'")
    if item.get("stac_version") != STAC_VERSION:
        problems.append(f"stac_version must be {STAC_VERSION}")
    properties = item.get("properties", {})
    if "datetime" not in properties or (properties["datetime"] is None
                                        and not {"start_datetime", "end_datetime"} <= set(properties)):
        problems.append("properties need datetime, or start_datetime and end_datetime")
    bbox = item.get("bbox", [])
    if len(bbox) != 4 or not (bbox[0] <= bbox[2] and bbox[1] <= bbox[3]):
        problems.append(f"bbox must be [west, south, east, north], got {bbox}")
    ring = item.get("geometry", {}).get("coordinates", [[]])[0]
    if len(ring) < 4 or ring[0] != ring[-1]:
        problems.append("geometry must be a closed polygon ring")
    for name, asset in item.get("assets", {}).items():
        if not asset.get("href") or not asset.get("type") or not asset.get("roles"):
            problems.append(f"asset {name!r} needs href, type and roles")
        for entry in asset.get("classification:classes", []):
            if not {"value", "description"} <= set(entry):
                problems.append(f"asset {name!r}: a class needs value and description")
    if problems:
        raise ValueError("invalid STAC item: " + "; ".join(problems))


# --------------------------------------------------------------------------- summary


def format_summary(report: dict) -> str:
    """A one-screen text summary of a report, for the command line."""
    lines = [f"{report['scene']}  method {report['method']}  grid {report['grid']['shape'][0]} x "
             f"{report['grid']['shape'][1]} px  {report['grid']['crs']}"]
    pixels = report["pixels"]
    lines.append(f"mapped {pixels['mapped']:,} of {pixels['total']:,} px ({pixels['nodata']:,} nodata)"
                 + (f", {report['mapped_hectares']:,.2f} ha" if report.get("mapped_hectares") is not None else ""))
    lines.append("")
    accuracy = report.get("accuracy") or {}
    per_class_accuracy = accuracy.get("per_class", {})
    lines.append(f"{'class':<24}{'pixels':>12}{'hectares':>12}{'accuracy':>10}")
    for entry in report["classes"]:
        hectares = "n/a" if entry["hectares"] is None else f"{entry['hectares']:,.2f}"
        acc = per_class_accuracy.get(entry["name"])
        lines.append(f"{entry['name'][:23]:<24}{entry['pixels']:>12,}{hectares:>12}"
                     f"{'' if acc is None else f'{acc:.3f}':>10}")
    if report["grid"].get("pixel_area_m2") is None:
        lines.append(f"  ({report['grid']['area_note']})")
    lines.append("")
    lines.append("availability pattern      pixels")
    for entry in report["patterns"]:
        lines.append(f"  {entry['name'][:22]:<22}{entry['pixels']:>10,}")
    if accuracy:
        lines.append("")
        lines.extend(accuracy_lines(accuracy))
    if report.get("availability_note"):
        lines.append("")
        lines.extend(f"note: {note}" for note in report["availability_note"])
    timings = report.get("timings_s", {})
    if timings:
        lines.append("")
        lines.append("timings: " + "  ".join(f"{stage} {seconds:.1f}s" for stage, seconds in timings.items())
                     + f"  (total {sum(timings.values()):.1f}s)")
    if report.get("outputs"):
        lines.append("")
        width = max(len(name) for name in report["outputs"]) + 2
        lines.extend(f"{name:<{width}}{target}" for name, target in report["outputs"].items())
    return "\n".join(lines)


def accuracy_lines(accuracy: dict) -> list[str]:
    """Held-out accuracy: overall, then per availability pattern and per footprint of the clouds and failures."""
    lines = [f"accuracy on {accuracy.get('n', 0):,} held-out px: OA {_pct(accuracy.get('oa'))}  "
             f"AA {_pct(accuracy.get('aa'))}  kappa {_fmt(accuracy.get('kappa'))}"]
    for kind, title in (("patterns", "by availability"), ("footprints", "by footprint")):
        for group, values in (accuracy.get(kind) or {}).items():
            lines.append(f"  {title + ':':<17}{group[:30]:<31}OA {_pct(values.get('oa')):>7}  AA {_pct(values.get('aa')):>7}  "
                         f"kappa {_fmt(values.get('kappa'))}  ({values.get('n', 0):,} px)")
    return lines


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
