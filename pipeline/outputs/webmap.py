"""Self-contained interactive web maps (Leaflet) of the exported COGs: ``map.html``, notebooks.

* :func:`interactive_map` (one run) and :func:`side_by_side` (two runs in synchronised panes) build a
  :class:`WebMap`: the class map with its colour table and a legend, confidence and availability as
  switchable layers, and the class, confidence and availability pattern of the pixel under the
  pointer (hover) or at a click (popup);
* :func:`write_web_map` writes one as ``map.html`` (atomically); :func:`pixel_info` reads the same
  values at a point in Python.

Why a page of our own instead of folium: folium's template loads Leaflet, jQuery, Bootstrap and
the marker plugins from four CDNs, so offline (agency and field machines) the page draws nothing.
Swapping its link lists still leaves plugins (DualMap's Leaflet.Sync, the GeoJSON tooltips) and
their CDN links to chase. The page here needs Leaflet only: ``webmap_assets/leaflet/`` is the npm
registry's ``leaflet`` at a pinned version (with its licence), inlined into the page with our own
``webmap.js``/``webmap.css``, so ``map.html`` is one file that draws its overlays with no network.
Only the basemap tiles are online; without them the overlays lie on a plain background and the
page says the basemap could not be loaded.

Overlays are the COGs warped to Web Mercator (the projection Leaflet draws in), at most
``max_side`` pixels a side, read through the COG overviews so large maps stay light. The hover and
click values come from the COGs on their own grid (at most ``LOOKUP_MAX_SIDE`` pixels a side: per
pixel up to that size, else per block through the overviews: MODE classes, AVERAGE confidence),
located with a mesh of control points from Web Mercator to grid pixels (bilinear between points,
as GDAL's approximate transformer), so a click reads the pixel the COG has there, whatever the CRS.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import rasterio
from affine import Affine
from PIL import Image
from pyproj import Transformer
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.transform import array_bounds
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform as transform_points
from rasterio.warp import transform_bounds

from pipeline.config.errors import InputError
from pipeline.files import write_text

LANDCOVER = "landcover.tif"
CONFIDENCE = "confidence.tif"
AVAILABILITY = "availability.tif"
WEB_MAP = "map.html"
WEB_MERCATOR = CRS.from_epsg(3857)
MAX_SIDE = 1024  # overlay images are at most this many pixels a side
LOOKUP_MAX_SIDE = 512  # hover/click values: per pixel up to this size a side, per block beyond
MESH_POINTS = 17  # control points a side of the Web Mercator -> grid pixel mesh
CONFIDENCE_SCALE = 65534  # confidence c is stored as round(c * scale) + 1 in uint16; 0 is nodata
ASSETS = Path(__file__).with_name("webmap_assets")
LEAFLET = ASSETS / "leaflet"
BASEMAP = {
    "name": "OpenStreetMap (online)",
    "url": "https://tile.openstreetmap.org/{z}/{x}/{y}.png",
    "attribution": '&copy; <a href="https://www.openstreetmap.org/copyright">OpenStreetMap</a> contributors',
    "max_native_zoom": 19,
}
LAYER_NAMES = {"classes": "land cover", "confidence": "confidence (0 to 1, viridis)",
               "availability": "availability pattern"}


@dataclass
class Overlay:
    """An RGBA image and its ``[[south, west], [north, east]]`` bounds in degrees."""

    rgba: np.ndarray
    bounds: list[list[float]]

    def data_uri(self) -> str:
        """The image as a ``data:image/png;base64,...`` URI (lossless)."""
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(self.rgba, dtype=np.uint8)).save(buffer, format="PNG")
        return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


@dataclass
class WebMap:
    """A complete HTML page; ``save`` writes it, notebooks display it (``_repr_html_``) in an iframe."""

    html: str

    def save(self, path: str | Path) -> Path:
        """Write the page to ``path`` atomically."""
        write_text(Path(path), self.html)
        return Path(path)

    def _repr_html_(self) -> str:
        return (f'<iframe srcdoc="{html.escape(self.html)}" style="width:100%;height:540px;border:none" '
                'sandbox="allow-scripts allow-popups"></iframe>')


def _require(path: Path) -> Path:
    if not path.is_file():
        raise InputError(path, "(file)", "a GeoTIFF written by pipeline.run (landcover/confidence/availability.tif)", "no such file")
    return path


def _warped(path: Path, max_side: int, resampling: Resampling) -> tuple[np.ma.MaskedArray, list[list[float]], dict]:
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


def _band_tags(path: Path, prefix: str) -> dict[int, str]:
    """``{value: name}`` from band 1's tags ``<prefix>_<value>``."""
    with rasterio.open(_require(Path(path))) as src:
        tags = src.tags(1)
    return {int(k.split("_", 1)[1]): v for k, v in tags.items()
            if k.startswith(prefix + "_") and k.split("_", 1)[1].isdigit()}


def class_names(path: Path) -> dict[int, str]:
    """``{value: name}`` from the class COG's band tags (``class_<value>``)."""
    return _band_tags(path, "class")


def class_colors(path: Path) -> dict[int, str]:
    """``{value: '#rrggbb'}`` from the class COG's colour table (nodata left out)."""
    names = class_names(path)
    with rasterio.open(_require(Path(path))) as src:
        table = src.colormap(1)
    return {v: "#{:02x}{:02x}{:02x}".format(*table[v][:3]) for v in names if v in table}


def _encode(values: np.ndarray) -> str:
    """Little-endian bytes of ``values`` in base64 (what the page decodes)."""
    return base64.b64encode(np.ascontiguousarray(values).astype(values.dtype.newbyteorder("<")).tobytes()).decode("ascii")


def pixel_lookup(folder: Path, max_side: int = LOOKUP_MAX_SIDE, points: int = MESH_POINTS) -> dict[str, Any]:
    """The page's hover/click data of one run: class, confidence and pattern rasters on the COG's grid
    (decimated to at most ``max_side`` pixels a side) and the Web Mercator -> grid pixel mesh.

    The mesh is ``points`` x ``points`` control points on a regular Web Mercator grid over the map's
    extent; ``cols``/``rows`` hold each point's position in grid pixels (fractional, 0 at the left/top edge).
    """
    folder = Path(folder)
    with rasterio.open(_require(folder / LANDCOVER)) as src:
        step = max(1.0, max(src.width, src.height) / max_side)
        height, width = max(1, math.ceil(src.height / step)), max(1, math.ceil(src.width / step))
        classes = src.read(1, out_shape=(height, width), resampling=Resampling.nearest)
        transform = src.transform * Affine.scale(src.width / width, src.height / height)
        crs = src.crs
    with rasterio.open(_require(folder / CONFIDENCE)) as src:
        confidence = src.read(1, out_shape=(height, width), resampling=Resampling.average).astype("float64")
    coded = np.where(np.isfinite(confidence), np.round(np.clip(confidence, 0, 1) * CONFIDENCE_SCALE) + 1, 0).astype("<u2")
    lookup: dict[str, Any] = {
        "width": width, "height": height, "step": round(step, 3),
        "classes": _encode(classes.astype(np.uint8)), "confidence": _encode(coded),
        "class_names": {str(k): v for k, v in class_names(folder / LANDCOVER).items()},
        "patterns": None, "pattern_names": {},
    }
    if (folder / AVAILABILITY).is_file():
        with rasterio.open(folder / AVAILABILITY) as src:
            lookup["patterns"] = _encode(src.read(1, out_shape=(height, width), resampling=Resampling.nearest).astype(np.uint8))
        lookup["pattern_names"] = {str(k): v for k, v in _band_tags(folder / AVAILABILITY, "pattern").items()}

    west, south, east, north = transform_bounds(crs, WEB_MERCATOR, *array_bounds(height, width, transform), densify_pts=21)
    gx, gy = np.meshgrid(np.linspace(west, east, points), np.linspace(north, south, points))
    sx, sy = Transformer.from_crs(WEB_MERCATOR, crs, always_xy=True).transform(gx, gy)
    inverse = ~transform
    cols = inverse.a * sx + inverse.b * sy + inverse.c
    rows = inverse.d * sx + inverse.e * sy + inverse.f
    lookup["mesh"] = {"west": west, "north": north, "dx": (east - west) / (points - 1), "dy": (north - south) / (points - 1),
                      "n": points, "cols": np.round(cols, 4).ravel().tolist(), "rows": np.round(rows, 4).ravel().tolist()}
    return lookup


def run_pane(folder: Path, title: str | None = None, max_side: int = MAX_SIDE) -> dict[str, Any]:
    """Everything the page draws for one run's exports in ``folder`` (JSON-ready)."""
    folder = Path(folder)
    names, colors = class_names(_require(folder / LANDCOVER)), class_colors(folder / LANDCOVER)
    classes = paletted_overlay(folder / LANDCOVER, max_side)
    layers = [{"name": LAYER_NAMES["classes"], "image": classes.data_uri(), "bounds": classes.bounds, "show": True, "opacity": 1.0}]
    confidence = continuous_overlay(folder / CONFIDENCE, max_side=max_side)
    layers.append({"name": LAYER_NAMES["confidence"], "image": confidence.data_uri(), "bounds": confidence.bounds,
                   "show": False, "opacity": 0.9})
    if (folder / AVAILABILITY).is_file():
        availability = paletted_overlay(folder / AVAILABILITY, max_side)
        layers.append({"name": LAYER_NAMES["availability"], "image": availability.data_uri(), "bounds": availability.bounds,
                       "show": False, "opacity": 0.9})
    return {
        "title": title if title is not None else default_title(folder),
        "bounds": classes.bounds,
        "layers": layers,
        "legend": [{"name": names[v], "color": colors[v]} for v in names if v in colors],
        "lookup": pixel_lookup(folder),
    }


def default_title(folder: Path) -> str:
    """A run's name on the page: the export folder's last two path parts (``<method or run>/<scene>``)."""
    parts = Path(folder).resolve().parts
    return "/".join(parts[-2:])


def _asset(name: str) -> str:
    return (ASSETS / name).read_text(encoding="utf-8")


def _leaflet_css() -> str:
    """Leaflet's stylesheet with its control images inlined (the layer switcher icon), so nothing is fetched."""
    css = (LEAFLET / "leaflet.css").read_text(encoding="utf-8")
    for image in sorted((LEAFLET / "images").glob("*.png")):
        uri = "data:image/png;base64," + base64.b64encode(image.read_bytes()).decode("ascii")
        css = css.replace(f"url(images/{image.name})", f"url({uri})")
    return css


def _inline_script(text: str) -> str:
    """Text safe inside ``<script>``: no ``</`` that could close the element early."""
    return text.replace("</", "<\\/")


def page(panes: Sequence[dict[str, Any]], title: str) -> WebMap:
    """The HTML page drawing ``panes`` (from :func:`run_pane`) side by side, synchronised; all assets inline."""
    data = json.dumps({"panes": list(panes), "basemap": BASEMAP}, allow_nan=False, separators=(",", ":"))
    text = (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n"
        f"<!-- Leaflet {leaflet_version()} (BSD-2-Clause, see the licence in pipeline/outputs/webmap_assets/leaflet) -->\n"
        f"<style>\n{_leaflet_css()}\n</style>\n<style>\n{_asset('webmap.css')}\n</style>\n"
        f"<script>\n{_inline_script((LEAFLET / 'leaflet.js').read_text(encoding='utf-8'))}\n</script>\n"
        "</head>\n<body>\n<div id=\"mmlc-panes\"></div>\n"
        f'<script type="application/json" id="mmlc-data">{_inline_script(data)}</script>\n'
        f"<script>\n{_inline_script(_asset('webmap.js'))}\n</script>\n</body>\n</html>\n"
    )
    return WebMap(text)


def leaflet_version() -> str:
    """The vendored Leaflet's version (from its file header)."""
    head = (LEAFLET / "leaflet.js").read_text(encoding="utf-8")[:200]
    return head.split("Leaflet ", 1)[1].split(",", 1)[0].strip() if "Leaflet " in head else "unknown"


def interactive_map(folder: Path, max_side: int = MAX_SIDE, title: str | None = None) -> WebMap:
    """The web map of one run's exports: land cover with legend, switchable confidence and availability."""
    pane = run_pane(Path(folder), title, max_side)
    return page([pane], f"Land cover: {pane['title']}")


def side_by_side(left: Path, right: Path, max_side: int = MAX_SIDE,
                 titles: tuple[str | None, str | None] = (None, None)) -> WebMap:
    """Two runs' exports in synchronised panes (pan and zoom one, the other follows), each with its legend."""
    panes = [run_pane(Path(left), titles[0], max_side), run_pane(Path(right), titles[1], max_side)]
    return page(panes, f"Land cover: {panes[0]['title']} | {panes[1]['title']}")


def write_web_map(folder: Path, path: Path | None = None, compare: Path | None = None,
                  max_side: int = MAX_SIDE, title: str | None = None) -> Path:
    """Write the web map of ``folder`` (beside ``compare`` when given) to ``path`` (default ``folder/map.html``)."""
    folder = Path(folder)
    target = Path(path) if path is not None else folder / WEB_MAP
    web_map = interactive_map(folder, max_side, title) if compare is None else side_by_side(folder, Path(compare), max_side)
    return web_map.save(target)


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
    value = info["class"]
    info["class_name"] = names.get(value, "no data") if isinstance(value, int) else "no data"
    return info
