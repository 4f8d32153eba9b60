"""Interactive web maps (folium / Leaflet) of the exported COGs, for notebooks and HTML reports.

* ``interactive_map(folder)``: the class map with its colour table and a legend, confidence and
  availability as switchable layers, and class regions that report class and mean confidence on
  hover (and on click);
* ``side_by_side(left, right)``: two runs (e.g. two methods) in synchronised panes;
* ``pixel_info(folder, lat, lon)``: class, confidence and availability pattern at a point.

Rasters are read from the COGs a run writes (``landcover.tif``, ``confidence.tif``,
``availability.tif``), decimated to at most ``max_side`` pixels a side through the COG overviews
and warped to Web Mercator, the projection Leaflet draws in, so large maps stay light.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from pathlib import Path

import folium
import geopandas as gpd
import matplotlib
import numpy as np
import rasterio
import rasterio.features
from affine import Affine
from branca.element import MacroElement, Template
from folium.plugins import DualMap
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform as transform_points
from rasterio.warp import transform_bounds
from scipy import ndimage
from shapely.geometry import shape

from pipeline.config.errors import InputError

LANDCOVER = "landcover.tif"
CONFIDENCE = "confidence.tif"
AVAILABILITY = "availability.tif"
WEB_MERCATOR = CRS.from_epsg(3857)
MAX_SIDE = 1024  # overlay images are at most this many pixels a side
REGION_MAX_SIDE = 256  # class regions (hover polygons) are traced on a grid at most this size


@dataclass
class Overlay:
    """An RGBA image and its ``[[south, west], [north, east]]`` bounds in degrees."""

    rgba: np.ndarray
    bounds: list[list[float]]


def _require(path: Path) -> Path:
    if not path.is_file():
        raise InputError(path, "(file)", "a GeoTIFF written by pipeline.run (landcover/confidence/availability.tif)", "no such file")
    return path


def _warped(path: Path, max_side: int, resampling: Resampling) -> tuple[np.ndarray, list[list[float]], dict]:
    """Band 1 warped to Web Mercator at most ``max_side`` pixels a side; its lat/lon bounds; the band's colour table."""
    with rasterio.open(_require(path)) as src, WarpedVRT(src, crs=WEB_MERCATOR, resampling=resampling) as vrt:
        scale = max(1.0, max(vrt.width, vrt.height) / max_side)
        shape_out = (max(1, round(vrt.height / scale)), max(1, round(vrt.width / scale)))
        data = vrt.read(1, out_shape=shape_out, resampling=resampling, masked=True)
        west, south, east, north = transform_bounds(WEB_MERCATOR, "EPSG:4326", *vrt.bounds)
        try:
            colormap = src.colormap(1)
        except ValueError:
            colormap = {}
    return data, [[south, west], [north, east]], colormap


def paletted_overlay(path: Path, max_side: int = MAX_SIDE) -> Overlay:
    """A categorical COG (classes, availability patterns) coloured by its own colour table; nodata transparent."""
    data, bounds, colormap = _warped(Path(path), max_side, Resampling.nearest)
    lut = np.zeros((256, 4), np.uint8)
    for value, rgba in colormap.items():
        lut[int(value)] = rgba
    rgba = lut[np.asarray(data.filled(0), dtype=np.uint8)]
    rgba[np.ma.getmaskarray(data)] = 0
    return Overlay(rgba, bounds)


def continuous_overlay(path: Path, cmap: str = "viridis", vmin: float = 0.0, vmax: float = 1.0,
                       max_side: int = MAX_SIDE) -> Overlay:
    """A float COG (confidence) through a matplotlib colour map; nodata (NaN) transparent."""
    data, bounds, _ = _warped(Path(path), max_side, Resampling.bilinear)
    values = np.ma.masked_invalid(data.astype("float32"))
    rgba = (matplotlib.colormaps[cmap]((values.filled(vmin) - vmin) / (vmax - vmin)) * 255).astype(np.uint8)
    rgba[np.ma.getmaskarray(values)] = 0
    return Overlay(rgba, bounds)


def class_names(path: Path) -> dict[int, str]:
    """``{value: name}`` from the class COG's band tags (``class_<value>``)."""
    with rasterio.open(_require(Path(path))) as src:
        tags = src.tags(1)
    return {int(k.split("_", 1)[1]): v for k, v in tags.items() if k.startswith("class_")}


def class_colors(path: Path) -> dict[int, str]:
    """``{value: '#rrggbb'}`` from the class COG's colour table (nodata left out)."""
    with rasterio.open(_require(Path(path))) as src:
        names = class_names(path)
        table = src.colormap(1)
    return {v: "#{:02x}{:02x}{:02x}".format(*table[v][:3]) for v in names if v in table}


def class_regions(folder: Path, max_side: int = REGION_MAX_SIDE) -> gpd.GeoDataFrame:
    """Connected regions of one class (traced on a grid of at most ``max_side`` pixels a side),
    with the class name, mean confidence and pixel count, in EPSG:4326.

    Decimation (nearest for classes, average for confidence, through the COG overviews) keeps the
    polygon count bounded whatever the map size.
    """
    folder = Path(folder)
    names = class_names(folder / LANDCOVER)
    with rasterio.open(folder / LANDCOVER) as src:
        scale = max(1.0, max(src.width, src.height) / max_side)
        out_shape = (max(1, math.ceil(src.height / scale)), max(1, math.ceil(src.width / scale)))
        classes = src.read(1, out_shape=out_shape, resampling=Resampling.nearest)
        transform = src.transform @ Affine.scale(src.width / out_shape[1], src.height / out_shape[0])
        crs, nodata = src.crs, src.nodata
    with rasterio.open(_require(folder / CONFIDENCE)) as src:
        confidence = src.read(1, out_shape=out_shape, resampling=Resampling.average)

    regions = np.zeros(classes.shape, np.int32)
    region_class: list[int] = [0]
    for value in names:
        labelled, count = ndimage.label(classes == value)  # 4-connected, as rasterio.features.shapes
        regions[labelled > 0] = labelled[labelled > 0] + len(region_class) - 1
        region_class += [value] * count
    ids = regions.ravel()
    valid = np.isfinite(confidence).ravel()
    pixels = np.bincount(ids, minlength=len(region_class))
    conf_sum = np.bincount(ids[valid], weights=confidence.ravel()[valid], minlength=len(region_class))
    conf_n = np.bincount(ids[valid], minlength=len(region_class))
    records = []
    for geom, rid in rasterio.features.shapes(regions, mask=(regions > 0) & (classes != nodata), transform=transform):
        rid = int(rid)
        mean = conf_sum[rid] / conf_n[rid] if conf_n[rid] else float("nan")
        records.append({"geometry": shape(geom), "value": region_class[rid], "class": names[region_class[rid]],
                        "confidence": round(float(mean), 3), "pixels": int(pixels[rid])})
    frame = gpd.GeoDataFrame(records, geometry="geometry", crs=crs) if records else gpd.GeoDataFrame(
        {"value": [], "class": [], "confidence": [], "pixels": []}, geometry=[], crs=crs)
    return frame.to_crs("EPSG:4326")


def legend(title: str, entries: dict[str, str]) -> MacroElement:
    """A fixed HTML legend (``{label: '#rrggbb'}``) in the lower-left corner of a folium map."""
    rows = "".join(
        f'<div><span style="background:{html.escape(color)};width:12px;height:12px;display:inline-block;'
        f'margin-right:6px;border:1px solid #555"></span>{html.escape(label)}</div>'
        for label, color in entries.items()
    )
    element = MacroElement()
    element._template = Template(
        "{% macro html(this, kwargs) %}"
        '<div class="mmlc-legend" style="position:fixed;bottom:24px;left:12px;z-index:9999;background:white;'
        'padding:6px 8px;border:1px solid #999;border-radius:4px;font:12px sans-serif">'
        f"<b>{html.escape(title)}</b>{rows}</div>"
        "{% endmacro %}"
    )
    return element


def add_layers(target: folium.Map, folder: Path, regions: bool = True, max_side: int = MAX_SIDE) -> folium.Map:
    """Add the class map, confidence and availability overlays and the hover regions of ``folder`` to a map."""
    folder = Path(folder)
    classes = paletted_overlay(folder / LANDCOVER, max_side)
    folium.raster_layers.ImageOverlay(classes.rgba, classes.bounds, name="land cover", opacity=0.85,
                                      interactive=False, zindex=1).add_to(target)
    conf = continuous_overlay(folder / CONFIDENCE, max_side=max_side)
    folium.raster_layers.ImageOverlay(conf.rgba, conf.bounds, name="confidence (0 to 1, viridis)", opacity=0.85,
                                      show=False, zindex=2).add_to(target)
    if (folder / AVAILABILITY).is_file():
        avail = paletted_overlay(folder / AVAILABILITY, max_side)
        folium.raster_layers.ImageOverlay(avail.rgba, avail.bounds, name="availability pattern", opacity=0.85,
                                          show=False, zindex=3).add_to(target)
    if regions:
        frame = class_regions(folder)
        fields = ["class", "confidence", "pixels"]
        folium.GeoJson(
            frame[fields + ["geometry"]].to_json(), name="class and confidence (hover, click)",
            style_function=lambda _: {"fillOpacity": 0.0, "weight": 0.3, "color": "#333333"},
            highlight_function=lambda _: {"weight": 2, "color": "#000000"},
            tooltip=folium.GeoJsonTooltip(fields=fields, aliases=["class", "mean confidence", "pixels"]),
            popup=folium.GeoJsonPopup(fields=fields, aliases=["class", "mean confidence", "pixels"]),
        ).add_to(target)
    target.fit_bounds(classes.bounds)
    return target


def interactive_map(folder: Path, max_side: int = MAX_SIDE, regions: bool = True) -> folium.Map:
    """A folium map of one run's exports: land cover with legend, switchable confidence and availability."""
    folder = Path(folder)
    names, colors = class_names(folder / LANDCOVER), class_colors(folder / LANDCOVER)
    target = folium.Map(tiles="OpenStreetMap", control_scale=True)
    add_layers(target, folder, regions, max_side)
    folium.LatLngPopup().add_to(target)
    folium.LayerControl(collapsed=False).add_to(target)
    legend("Land cover", {names[v]: colors[v] for v in names if v in colors}).add_to(target)
    return target


def side_by_side(left: Path, right: Path, max_side: int = MAX_SIDE) -> DualMap:
    """Two runs' exports in synchronised panes (pan and zoom one, the other follows), with the class legend."""
    dual = DualMap(tiles="OpenStreetMap", control_scale=True)
    add_layers(dual.m1, Path(left), regions=True, max_side=max_side)
    add_layers(dual.m2, Path(right), regions=True, max_side=max_side)
    folium.LayerControl(collapsed=True).add_to(dual)
    names, colors = class_names(Path(left) / LANDCOVER), class_colors(Path(left) / LANDCOVER)
    legend("Land cover", {names[v]: colors[v] for v in names if v in colors}).add_to(dual)
    return dual


def pixel_info(folder: Path, lat: float, lon: float) -> dict[str, object]:
    """Class, confidence and availability pattern of the pixel at (lat, lon) in degrees; None outside the map."""
    folder = Path(folder)
    names = class_names(folder / LANDCOVER)
    info: dict[str, object] = {"lat": lat, "lon": lon}
    for key, name in (("class", LANDCOVER), ("confidence", CONFIDENCE), ("pattern", AVAILABILITY)):
        path = folder / name
        if not path.is_file():
            continue
        with rasterio.open(path) as src:
            xs, ys = transform_points("EPSG:4326", src.crs, [lon], [lat])
            row, col = src.index(xs[0], ys[0])
            if not (0 <= row < src.height and 0 <= col < src.width):
                return {**info, "class": None, "inside": False}
            value = src.read(1, window=((row, row + 1), (col, col + 1)))[0, 0]
            info[key] = float(value) if key == "confidence" else int(value)
            if key == "pattern":
                info["pattern_name"] = src.tags(1).get(f"pattern_{int(value)}", "none")
    info["inside"] = True
    info["class_name"] = names.get(int(info["class"]), "no data")  # type: ignore[arg-type]
    return info
