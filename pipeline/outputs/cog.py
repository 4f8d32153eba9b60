"""From a map store (see :mod:`pipeline.data.store`) to the files a user opens.

* ``write_class_cog``: Cloud-Optimized GeoTIFF of the class map, uint8, nodata 0, the class
  colour table, class names as band tags, MODE overviews, and a QGIS style (``.qml``) beside it.
* ``write_confidence_cog``: float32 COG of the max-probability confidence, NaN nodata.
* ``write_pattern_cog``: uint8 COG of the availability pattern with a colour table and names.
* ``write_quicklook``: a PNG of the class map and the pattern map with legends.

Memory is bounded by the window size, not the scene size: the map store is read window by
window into a tiled scratch GeoTIFF, which GDAL's COG driver then copies into the final layout
(building the overviews from the file). Every file is written under a temporary name in its
target folder and moved into place only when complete.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import matplotlib
import numpy as np
import rasterio
import rasterio.shutil
import xarray as xr
from affine import Affine
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from rasterio.crs import CRS
from rasterio.windows import Window

from models.patterns import complete_pattern, pattern_name
from pipeline.config.errors import InputError
from pipeline.data.store import CLASS_NODATA, PATTERN_NODATA
from pipeline.files import atomic_file, temporary_sibling
from pipeline.storage import Location, as_location

CLASS_VAR = "class"
CONFIDENCE_VAR = "confidence"
PATTERN_VAR = "pattern"
# Band description of each COG: how a reader (and the STAC item) knows which layer a file holds.
BAND_DESCRIPTIONS = {CLASS_VAR: "class", CONFIDENCE_VAR: "confidence", PATTERN_VAR: "availability pattern"}

COG_BLOCKSIZE = 256
WINDOW_BLOCKS = 4  # read and write windows of 4 x 4 blocks (1024 x 1024 pixels)
GDAL_CACHE_MB = 256  # GDAL's block cache while writing; its default (5% of RAM) grows with the scene
QUICKLOOK_MAX_SIDE = 2000  # larger maps are decimated (striding) before plotting

NODATA_RGBA = (0.85, 0.85, 0.85, 1.0)  # light grey: visible against the white figure
TRANSPARENT = (0, 0, 0, 0)


# --------------------------------------------------------------------------- map store access


def _source(map_ds: xr.Dataset) -> str | None:
    return map_ds.encoding.get("source")


def map_georeference(map_ds: xr.Dataset) -> tuple[CRS, Affine]:
    """CRS and affine transform of a map store: its ``crs``/``transform`` attrs, else rioxarray's."""
    crs_attr = map_ds.attrs.get("crs")
    transform_attr = map_ds.attrs.get("transform")
    try:
        crs = CRS.from_user_input(crs_attr) if crs_attr else map_ds.rio.crs
        transform = Affine(*transform_attr[:6]) if transform_attr is not None else map_ds.rio.transform()
    except (ValueError, TypeError) as error:  # CRSError is a ValueError; a short transform a TypeError
        raise InputError(_source(map_ds), "attrs.crs/attrs.transform", "a CRS and 6 affine coefficients",
                         f"crs={crs_attr!r}, transform={transform_attr!r} ({error})") from error
    if crs is None:
        raise InputError(_source(map_ds), "attrs.crs", "a CRS (e.g. 'EPSG:32632')", "none")
    return crs, transform


def map_variable(map_ds: xr.Dataset, name: str, dtype: str | None) -> xr.DataArray:
    """The (y, x) variable ``name`` of a map store, checked for presence, dims and dtype."""
    if name not in map_ds.data_vars:
        raise InputError(_source(map_ds), name, f"a (y, x) variable '{name}'", f"variables {sorted(map(str, map_ds.data_vars))}")
    variable = map_ds[name]
    if variable.dims != ("y", "x"):
        raise InputError(_source(map_ds), name, "dims ('y', 'x')", str(variable.dims))
    if dtype is not None and variable.dtype != np.dtype(dtype):
        raise InputError(_source(map_ds), name, f"dtype {dtype}", str(variable.dtype))
    return variable


def class_table(map_ds: xr.Dataset) -> list[dict]:
    """The ``classes`` attr: ``[{value, name, color, ...}]`` sorted by value."""
    classes = map_ds.attrs.get("classes")
    if not classes or not all({"value", "name", "color"} <= set(c) for c in classes):
        raise InputError(_source(map_ds), "attrs.classes", "a list of {value, name, color}", repr(classes)[:200])
    return sorted(classes, key=lambda c: int(c["value"]))


def modality_names(map_ds: xr.Dataset) -> list[str]:
    """Modality names in catalog order (pattern bit i is modality i)."""
    modalities = map_ds.attrs.get("modalities")
    if not modalities:
        raise InputError(_source(map_ds), "attrs.modalities", "a list of {name, kind, ...}", repr(modalities))
    return [m["name"] if isinstance(m, Mapping) else str(m) for m in modalities]


def hex_to_rgba(color: str) -> tuple[int, int, int, int]:
    """'#rrggbb' -> (r, g, b, 255)."""
    value = color.lstrip("#")
    return int(value[0:2], 16), int(value[2:4], 16), int(value[4:6], 16), 255


def pattern_colors(num_modalities: int) -> dict[int, tuple[int, int, int, int]]:
    """A fixed colour per availability pattern code 1..2**M - 1; the complete pattern is always green."""
    def colours(name: str) -> list[tuple[float, ...]]:
        return [tuple(c[:3]) for c in matplotlib.colormaps[name](range(matplotlib.colormaps[name].N))]

    tab10 = colours("tab10")
    green = tab10.pop(2)
    palette = tab10 + colours("Dark2") + colours("Set1")
    complete = complete_pattern(num_modalities)
    rgb = {code: palette[(code - 1) % len(palette)] for code in range(1, complete)} | {complete: green}
    return {code: (round(r * 255), round(g * 255), round(b * 255), 255) for code, (r, g, b) in rgb.items()}


# --------------------------------------------------------------------------- COG writing


def _windows(height: int, width: int) -> Iterator[Window]:
    step = COG_BLOCKSIZE * WINDOW_BLOCKS
    for row in range(0, height, step):
        for col in range(0, width, step):
            yield Window(col, row, min(step, width - col), min(step, height - row))


def _write_cog(
    variable: xr.DataArray,
    path: Location,
    *,
    crs: CRS,
    transform: Affine,
    dtype: str,
    nodata: float,
    resampling: str,
    description: str,
    colormap: dict[int, tuple[int, int, int, int]] | None = None,
    band_tags: dict[str, str] | None = None,
) -> Location:
    """Stream ``variable`` window by window into a scratch tiled GeoTIFF, then copy it as a COG.

    ``path`` may be a URL: the COG is made locally and uploaded (see :func:`pipeline.files.atomic_file`).
    """
    path = as_location(path)
    height, width = variable.shape
    profile = {
        "driver": "GTiff", "height": height, "width": width, "count": 1, "dtype": dtype,
        "crs": crs, "transform": transform, "nodata": nodata,
        "tiled": True, "blockxsize": COG_BLOCKSIZE, "blockysize": COG_BLOCKSIZE,
        "compress": "DEFLATE", "ZLEVEL": 1, "BIGTIFF": "IF_SAFER",  # scratch: fast, still small on disk
    }
    if colormap:
        profile["photometric"] = "palette"
    with (rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB), atomic_file(path) as tmp, _scratch_file(tmp) as scratch):
        with rasterio.open(scratch, "w", **profile) as dst:
            if colormap:  # before any pixel: GDAL cannot change the photometric tag once blocks are written
                dst.write_colormap(1, colormap)
            for window in _windows(height, width):
                rows, cols = window.toslices()
                block = variable.isel(y=rows, x=cols).to_numpy().astype(dtype, copy=False)
                dst.write(block, 1, window=window)
            dst.set_band_description(1, description)
            if band_tags:
                dst.update_tags(1, **band_tags)
        options = {"BLOCKSIZE": COG_BLOCKSIZE, "COMPRESS": "DEFLATE", "RESAMPLING": resampling,
                   "OVERVIEWS": "AUTO", "BIGTIFF": "IF_SAFER"}
        if np.dtype(dtype).kind == "f":
            options["PREDICTOR"] = "YES"
        rasterio.shutil.copy(scratch, tmp, driver="COG", **options)
    return path


@contextmanager
def _scratch_file(path: Path) -> Iterator[Path]:
    """A scratch GeoTIFF beside the local file ``path`` (the COG's temporary), removed afterwards."""
    scratch = temporary_sibling(path.with_name(f"{path.stem}-scratch.tif"))
    try:
        yield scratch
    finally:
        for leftover in (scratch, scratch.with_name(scratch.name + ".aux.xml")):
            leftover.unlink(missing_ok=True)


def write_class_cog(map_ds: xr.Dataset, path: Location) -> Location:
    """Write the class map as a COG (uint8, nodata 0, colour table, MODE overviews) and a ``.qml`` beside it.

    Class names are band tags ``class_<value>`` (and the band description is ``class``); the QGIS
    style ``<path stem>.qml`` is picked up automatically by QGIS and shows names and colours.
    Returns the COG path.
    """
    variable = map_variable(map_ds, CLASS_VAR, "uint8")
    crs, transform = map_georeference(map_ds)
    classes = class_table(map_ds)
    colormap = {CLASS_NODATA: TRANSPARENT} | {int(c["value"]): hex_to_rgba(c["color"]) for c in classes}
    tags = {f"class_{int(c['value'])}": str(c["name"]) for c in classes}
    written = _write_cog(variable, path, crs=crs, transform=transform, dtype="uint8", nodata=CLASS_NODATA,
                         resampling="MODE", description=BAND_DESCRIPTIONS[CLASS_VAR], colormap=colormap, band_tags=tags)
    entries = [(int(c["value"]), c["color"], str(c["name"])) for c in classes]
    write_qgis_style(entries, as_location(path).with_suffix(".qml"))
    return written


def write_confidence_cog(map_ds: xr.Dataset, path: Location) -> Location:
    """Write the max-probability confidence as a float32 COG with NaN nodata and AVERAGE overviews."""
    variable = map_variable(map_ds, CONFIDENCE_VAR, None)
    if variable.dtype.kind != "f":
        raise InputError(_source(map_ds), CONFIDENCE_VAR, "a floating-point variable", str(variable.dtype))
    crs, transform = map_georeference(map_ds)
    return _write_cog(variable, path, crs=crs, transform=transform, dtype="float32", nodata=float("nan"),
                      resampling="AVERAGE", description=BAND_DESCRIPTIONS[CONFIDENCE_VAR])


def write_pattern_cog(map_ds: xr.Dataset, path: Location) -> Location:
    """Write the availability pattern as a uint8 COG: colour table, tags ``pattern_<code>`` = 'hs+lidar', ``.qml``."""
    variable = map_variable(map_ds, PATTERN_VAR, "uint8")
    crs, transform = map_georeference(map_ds)
    names = modality_names(map_ds)
    colors = pattern_colors(len(names))
    colormap = {PATTERN_NODATA: TRANSPARENT} | colors
    tags = {f"pattern_{code}": pattern_name(code, names) for code in colors}
    tags["modalities"] = ",".join(names)
    written = _write_cog(variable, path, crs=crs, transform=transform, dtype="uint8", nodata=PATTERN_NODATA,
                         resampling="MODE", description=BAND_DESCRIPTIONS[PATTERN_VAR], colormap=colormap,
                         band_tags=tags)
    entries = [(code, "#{:02x}{:02x}{:02x}".format(*rgba[:3]), pattern_name(code, names)) for code, rgba in colors.items()]
    write_qgis_style(entries, as_location(path).with_suffix(".qml"))
    return written


def write_qgis_style(entries: list[tuple[int, str, str]], path: Location) -> Location:
    """A QGIS layer style (paletted renderer): one ``(value, '#rrggbb', label)`` entry per value."""
    qgis = ET.Element("qgis", version="3.28", styleCategories="AllStyleCategories")
    pipe = ET.SubElement(qgis, "pipe")
    renderer = ET.SubElement(pipe, "rasterrenderer", type="paletted", band="1", opacity="1",
                             alphaBand="-1", nodataColor="")
    ET.SubElement(renderer, "rasterTransparency")
    palette = ET.SubElement(renderer, "colorPalette")
    for value, color, label in entries:
        ET.SubElement(palette, "paletteEntry", value=str(value), color=color.lower(), alpha="255", label=label)
    ET.SubElement(pipe, "brightnesscontrast", brightness="0", contrast="0")
    ET.SubElement(pipe, "rasterresampler", maxOversampling="2")
    ET.SubElement(qgis, "blendMode").text = "0"
    ET.indent(qgis)
    text = "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n" + ET.tostring(qgis, encoding="unicode")
    path = as_location(path)
    with atomic_file(path) as tmp:
        tmp.write_text(text + "\n", encoding="utf-8")
    return path


# --------------------------------------------------------------------------- quicklook


def decimated_view(map_ds: xr.Dataset, max_side: int = QUICKLOOK_MAX_SIDE) -> tuple[xr.Dataset, int]:
    """The class and pattern layers strided so that neither side exceeds ``max_side``; and the stride.

    Striding (nearest neighbour) keeps class values valid, and only the strided pixels are
    materialised, chunk by chunk, never the whole map.
    """
    height, width = map_ds.sizes["y"], map_ds.sizes["x"]
    step = max(1, math.ceil(max(height, width) / max_side))
    view = map_ds[[CLASS_VAR, PATTERN_VAR]].isel(y=slice(None, None, step), x=slice(None, None, step))
    return view.compute(), step


def write_quicklook(map_ds: xr.Dataset, path: Location, title: str | None = None,
                    max_side: int = QUICKLOOK_MAX_SIDE) -> Location:
    """A PNG of the class map (class colours, nodata grey) and the availability pattern map, with legends.

    Axes are in CRS units. Maps larger than ``max_side`` pixels on a side are decimated first.
    """
    map_variable(map_ds, CLASS_VAR, "uint8")
    map_variable(map_ds, PATTERN_VAR, "uint8")
    crs, transform = map_georeference(map_ds)
    classes = class_table(map_ds)
    names = modality_names(map_ds)
    view, step = decimated_view(map_ds, max_side)
    class_values = view[CLASS_VAR].to_numpy()
    pattern_values = view[PATTERN_VAR].to_numpy()

    class_lut = _lut({int(c["value"]): hex_to_rgba(c["color"]) for c in classes})
    class_labels = {int(c["value"]): str(c["name"]) for c in classes}
    pattern_rgba = pattern_colors(len(names))
    pattern_lut = _lut(pattern_rgba)
    pattern_labels = {code: pattern_name(code, names) for code in pattern_rgba}

    height, width = map_ds.sizes["y"], map_ds.sizes["x"]
    wide = width >= 1.5 * height
    panel_w = 9.0 if wide else 6.0
    panel_h = min(max(panel_w * height / width, 1.5), 9.0)
    layout = (2, 1) if wide else (1, 2)
    figsize = (panel_w + 3.2, 2 * panel_h + 1.4) if wide else (2 * (panel_w + 3.2), panel_h + 1.2)
    figure = Figure(figsize=figsize, dpi=100, layout="constrained")
    axes = figure.subplots(*layout)
    extent = _extent(transform, width, height)
    units = _axis_units(crs)

    panels = [
        (axes[0], class_values, class_lut, class_labels, "Land cover", "no data"),
        (axes[1], pattern_values, pattern_lut, pattern_labels, "Available modalities", "none available"),
    ]
    for ax, values, lut, labels, panel_title, nodata_label in panels:
        ax.imshow(lut[values], extent=extent, interpolation="nearest")
        ax.set_title(panel_title)
        ax.set_xlabel(f"x ({units})" if extent else "column (px)")
        ax.set_ylabel(f"y ({units})" if extent else "row (px)")
        ax.ticklabel_format(useOffset=False, style="plain")
        ax.tick_params(labelsize=7)
        present = set(np.unique(values).tolist())
        handles = [Patch(facecolor=lut[v], edgecolor="0.4", label=labels.get(v, f"value {v}"))
                   for v in sorted(present - {0})]
        if 0 in present:
            handles.append(Patch(facecolor=NODATA_RGBA, edgecolor="0.4", label=nodata_label))
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    suptitle = title or map_ds.attrs.get("scene") or as_location(path).stem
    if step > 1:
        suptitle += f" (every {step}th pixel)"
    figure.suptitle(suptitle)

    path = as_location(path)
    with atomic_file(path) as tmp:
        figure.savefig(tmp, format="png")
    return path


def _lut(colors: Mapping[int, tuple[int, int, int, int]]) -> np.ndarray:
    """(256, 4) float RGBA lookup table: listed values in their colour, everything else nodata grey."""
    lut = np.tile(np.asarray(NODATA_RGBA, dtype=np.float32), (256, 1))
    for value, rgba in colors.items():
        lut[value] = np.asarray(rgba, dtype=np.float32) / 255.0
    return lut


def _extent(transform: Affine, width: int, height: int) -> tuple[float, float, float, float] | None:
    """(left, right, bottom, top) in CRS units for imshow; None for rotated grids (plotted in pixels)."""
    if transform.b != 0 or transform.d != 0:
        return None
    left, top = transform.c, transform.f
    right, bottom = left + transform.a * width, top + transform.e * height
    return left, right, bottom, top


def _axis_units(crs: CRS) -> str:
    if crs.is_geographic:
        return "degrees"
    units = crs.linear_units or "CRS units"
    return "m" if units in ("metre", "meter") else units
