"""The demo scene: a procedural, seeded, Trento-like HS + LiDAR scene the project generates itself.

Fields, apple orchards, vineyards, woods and buildings lie in parcels separated by
roads and gravel tracks, on a 1 m grid in EPSG:32632 near Trento. The hyperspectral
cube (63 bands, 402-989 nm) mixes real spectra of the ``earthlib`` library (MIT;
PROSAIL canopies, measured soils, roofs, asphalt), resampled to the sensor bands,
with sub-pixel mixing, cast shadows, brightness variation and sensor noise. The
LiDAR raster holds the height above ground (m) and an intensity derived from each
material's reflectance near 1064 nm. Labels (Trento's six classes) cover about 30%
of the pixels, in blobs inside parcels. A cloud polygon file (EPSG:4326) hides
about 12% of the optical data, whose pixels show the cloud; a LiDAR strip that was
never flown (about 10%) is nodata in the LiDAR raster and recorded as a failure
footprint (EPSG:4326).

Everything is written as GeoTIFF/GeoJSON, so the demo goes through the same readers
as real data, window by window (rows), so a scene many times Trento's size is never
held whole in memory.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import rasterio
import shapely
import yaml
from affine import Affine
from pyproj import Transformer
from rasterio import features
from rasterio.windows import Window
from scipy.spatial import cKDTree
from shapely import affinity
from shapely.geometry import Polygon, box
from shapely.ops import unary_union

from pipeline.config.catalog import Catalog, Scene
from pipeline.config.errors import CatalogError
from pipeline.files import atomic_file, file_set
from pipeline.storage import local_path

log = logging.getLogger(__name__)

CRS = "EPSG:32632"
ORIGIN = (664000.0, 5104000.0)  # upper-left corner, near Trento (UTM 32N)
RESOLUTION = 1.0
WAVELENGTHS = np.round(np.linspace(402.0, 989.0, 63), 2)
LIDAR_NODATA = -9999.0
WINDOW_ROWS = 128
HALO = 14  # rows of context around a window, for cast shadows
TRACK_WIDTH = 3  # north-south tracks between parcels, pixels

APPLE, BUILDINGS, GROUND, WOODS, VINEYARD, ROADS = 1, 2, 3, 4, 5, 6
CLASSES = {
    APPLE: ("Apple trees", "#d62728"),
    BUILDINGS: ("Buildings", "#7f7f7f"),
    GROUND: ("Ground", "#c49c6b"),
    WOODS: ("Woods", "#2ca02c"),
    VINEYARD: ("Vineyard", "#9467bd"),
    ROADS: ("Roads", "#ffdd44"),
}
FILES = {
    "hs": "hs.tif",
    "lidar": "lidar.tif",
    "labels": "labels.tif",
    "clouds": "clouds.geojson",
    "lidar_gap": "lidar_gap.geojson",
}


# ----------------------------------------------------------------------------- spectra


@dataclass
class SpectralLibrary:
    """Endmember spectra resampled to the sensor bands, grouped by material, with reflectance at 1064 nm."""

    spectra: np.ndarray  # (n, bands) reflectance
    r1064: np.ndarray  # (n,)
    groups: dict[str, np.ndarray]  # material -> indices into spectra
    names: list[str]

    def pick(self, rng: np.random.Generator, group: str) -> int:
        return int(rng.choice(self.groups[group]))


def _earthlib_files() -> tuple[Path, Path, Path]:
    import earthlib

    data = Path(earthlib.__file__).parent / "data"
    return data / "spectra.sli", data / "spectra.sli.hdr", data / "spectra.csv"


def load_library(seed: int, wavelengths: np.ndarray = WAVELENGTHS) -> SpectralLibrary:
    """Choose a few earthlib spectra per material (seeded) and resample them to ``wavelengths`` (nm)."""
    import pandas as pd

    from pipeline.data.sources.envi import header_wavelengths, parse_header

    sli, hdr, csv = _earthlib_files()
    fields = parse_header(hdr)
    n, bands = int(fields["lines"]), int(fields["samples"])
    library = np.fromfile(sli, dtype="<f4").reshape(n, bands)
    lib_wl = np.asarray(header_wavelengths(hdr))
    meta = pd.read_csv(csv)
    rng = np.random.default_rng([seed, 1])

    def band(nm: float) -> int:
        return int(np.argmin(np.abs(lib_wl - nm)))

    nir, red = library[:, band(850)], library[:, band(660)]
    level3 = meta["LEVEL_3"].to_numpy()
    canopy = np.where(level3 == "canopy")[0]
    canopy = canopy[np.argsort(nir[canopy])]
    k = len(canopy)

    def take(indices: np.ndarray, count: int) -> np.ndarray:
        return rng.choice(indices, size=min(count, len(indices)), replace=False)

    soils = np.where((level3 == "soil") & (red > 0.12) & (red < 0.30))[0]
    groups_src = {
        # Canopies ranked by NIR brightness: dense dark woods, vines and apple trees in overlapping ranges.
        "woods": take(canopy[int(0.05 * k) : int(0.40 * k)], 4),
        "vine": take(canopy[int(0.30 * k) : int(0.70 * k)], 4),
        "apple": take(canopy[int(0.50 * k) : int(0.92 * k)], 4),
        "grass": take(canopy[int(0.35 * k) : int(0.95 * k)], 4),
        "soil": take(soils, 6),
        "dry": take(np.where(np.isin(level3, ["npv", "litter", "dirt"]))[0], 3),
        "gravel": take(np.where(np.isin(level3, ["gravel", "dirt", "sidewalk"]))[0], 3),
        "asphalt": take(np.where(np.isin(level3, ["asphalt", "road", "parking_lot"]))[0], 4),
        "roof": np.concatenate(
            [take(np.where(level3 == m)[0], 2) for m in ("tile", "concrete_tile", "comp_shingle", "metal")]
        ),
    }
    chosen = np.unique(np.concatenate(list(groups_src.values())))
    position = {int(i): j for j, i in enumerate(chosen)}
    spectra = np.stack([np.interp(wavelengths, lib_wl, library[i]) for i in chosen]).astype("float32")
    r1064 = library[chosen, band(1064)].astype("float32")
    groups = {g: np.array([position[int(i)] for i in idx]) for g, idx in groups_src.items()}
    names = meta["NAME"].to_numpy()[chosen].tolist()
    return SpectralLibrary(spectra, r1064, groups, names)


# ----------------------------------------------------------------------------- layout


@dataclass
class Rect:
    r0: int
    r1: int
    c0: int
    c1: int

    def rows(self, lo: int, hi: int) -> tuple[int, int]:
        return max(self.r0, lo), min(self.r1, hi)


@dataclass
class Parcel(Rect):
    cls: int
    seed: tuple[int, ...]
    labelled: bool = True


@dataclass
class Road(Rect):
    material: str = "asphalt"
    label_segments: list[tuple[int, int]] = field(default_factory=list)  # along the road, in pixels


@dataclass
class Layout:
    height: int
    width: int
    parcels: list[Parcel]
    roads: list[Road]


def make_layout(seed: int, height: int, width: int) -> Layout:
    """Blocks of parcels between east-west roads, split by north-south tracks; a class per parcel."""
    rng = np.random.default_rng([seed, 2])
    classes = np.array([VINEYARD, APPLE, WOODS, BUILDINGS, GROUND])
    weights = np.array([0.27, 0.22, 0.17, 0.21, 0.13])
    parcels: list[Parcel] = []
    roads: list[Road] = []
    y = 0
    while y < height:
        block = int(rng.integers(34, 62))
        parcels.extend(_block(rng, y, min(y + block, height), width, classes, weights, len(parcels), seed))
        y += block
        if y >= height:
            break
        road_w = int(rng.integers(4, 7))
        roads.append(_road(rng, Rect(y, min(y + road_w, height), 0, width), "asphalt", horizontal=True))
        y += road_w
    for p in parcels:
        if p.c1 < width and p.r1 > p.r0:
            material = str(rng.choice(["gravel", "asphalt"]))
            roads.append(_road(rng, Rect(p.r0, p.r1, p.c1, min(p.c1 + TRACK_WIDTH, width)), material, horizontal=False))
    return Layout(height, width, parcels, roads)


def _block(rng, r0, r1, width, classes, weights, first_id, seed) -> list[Parcel]:
    out: list[Parcel] = []
    x = 0
    while x < width:
        pw = int(rng.integers(35, 110))
        c1 = min(x + pw, width)
        if width - c1 < 20:
            c1 = width
        cls = int(rng.choice(classes, p=weights))
        out.append(Parcel(r0, r1, x, c1, cls, (seed, 3, first_id + len(out)), labelled=bool(rng.random() < 0.85)))
        x = c1 + TRACK_WIDTH
    return out


def _road(rng, rect: Rect, material: str, horizontal: bool) -> Road:
    length = (rect.c1 - rect.c0) if horizontal else (rect.r1 - rect.r0)
    segments = []
    for _ in range(int(rng.integers(1, 4)) if length > 40 else 0):
        seg = int(rng.integers(30, 100))
        start = int(rng.integers(0, max(1, length - seg)))
        segments.append((start, start + seg))
    return Road(rect.r0, rect.r1, rect.c0, rect.c1, material=material, label_segments=segments)


# ----------------------------------------------------------------------------- rendering


@dataclass
class Canvas:
    """Per-pixel properties of a band of rows: class, height, endmembers and their fractions."""

    cls: np.ndarray
    height: np.ndarray
    canopy: np.ndarray  # canopy fraction
    idx_c: np.ndarray  # canopy endmember
    idx_a: np.ndarray  # background endmembers, mixed with weight w
    idx_b: np.ndarray
    labelled: np.ndarray

    @classmethod
    def empty(cls, rows: int, width: int, soil: int) -> Canvas:
        return cls(
            cls=np.full((rows, width), GROUND, np.uint8),
            height=np.zeros((rows, width), np.float32),
            canopy=np.zeros((rows, width), np.float32),
            idx_c=np.zeros((rows, width), np.int16),
            idx_a=np.full((rows, width), soil, np.int16),
            idx_b=np.full((rows, width), soil, np.int16),
            labelled=np.zeros((rows, width), bool),
        )


def _ellipse_mask(rng: np.random.Generator, p: Rect, yy: np.ndarray, xx: np.ndarray, margin: int = 4) -> np.ndarray:
    """A labelled blob inside the parcel, away from its edges (yy, xx: parcel-local pixel centres)."""
    h, w = p.r1 - p.r0, p.c1 - p.c0
    ay, ax = (h / 2 - margin) * rng.uniform(0.7, 1.0), (w / 2 - margin) * rng.uniform(0.6, 1.0)
    cy = h / 2 + rng.uniform(-1, 1) * max(0.0, h / 2 - margin - ay)
    cx = w / 2 + rng.uniform(-1, 1) * max(0.0, w / 2 - margin - ax)
    if ay <= 1 or ax <= 1:
        return np.zeros(yy.shape, bool)
    return ((yy - cy) / ay) ** 2 + ((xx - cx) / ax) ** 2 <= 1.0


def _render_parcel(p: Parcel, lib: SpectralLibrary, canvas: Canvas, lo: int, hi: int) -> None:
    r0, r1 = p.rows(lo, hi)
    if r1 <= r0:
        return
    rng = np.random.default_rng(p.seed)  # same draws whatever the window: the parcel is one object
    rows = slice(r0 - lo, r1 - lo)
    cols = slice(p.c0, p.c1)
    yy, xx = np.meshgrid(np.arange(r0, r1) - p.r0 + 0.5, np.arange(p.c0, p.c1) - p.c0 + 0.5, indexing="ij")
    h, w = p.r1 - p.r0, p.c1 - p.c0
    background = (lib.pick(rng, "soil"), lib.pick(rng, "grass") if rng.random() < 0.6 else lib.pick(rng, "dry"))
    height = np.zeros(yy.shape, np.float32)
    cover = np.zeros(yy.shape, np.float32)
    cls = np.full(yy.shape, p.cls, np.uint8)
    idx_a = np.full(yy.shape, background[0], np.int16)
    idx_b = np.full(yy.shape, background[1], np.int16)
    idx_c = np.full(yy.shape, lib.pick(rng, {APPLE: "apple", WOODS: "woods", VINEYARD: "vine"}.get(p.cls, "grass")), np.int16)
    blob = _ellipse_mask(rng, p, yy, xx)
    labelled = blob if p.labelled else np.zeros(yy.shape, bool)

    if p.cls == APPLE:
        sx, sy = rng.uniform(3.0, 4.5), rng.uniform(4.0, 5.5)
        radius, top = rng.uniform(1.3, 2.0), rng.uniform(3.0, 6.0)
        ny, nx = int(h / sy) + 2, int(w / sx) + 2
        jitter = rng.uniform(0.8, 1.15, size=(ny, nx))
        iy, ix = np.round(yy / sy).astype(int), np.round(xx / sx).astype(int)
        d = np.hypot(yy - iy * sy, xx - ix * sx)
        shape = np.sqrt(np.clip(1 - (d / radius) ** 2, 0, 1))
        height = (top * jitter[iy, ix] * (0.55 + 0.45 * shape) * (shape > 0)).astype(np.float32)
        cover = np.clip(shape * 1.6, 0, 1).astype(np.float32)
    elif p.cls == VINEYARD:
        along_x = rng.random() < 0.5
        pergola = rng.random() < 0.35  # the Trentino pergola: a continuous canopy on a trellis
        across = yy if along_x else xx
        spacing = rng.uniform(2.2, 3.0)
        d = np.abs(((across / spacing) % 1.0) - 0.5) * spacing
        if pergola:
            cover = np.clip(0.95 - 0.5 * (d / spacing) ** 2 + rng.normal(0, 0.05, yy.shape), 0, 1).astype(np.float32)
            height = (rng.uniform(2.0, 2.5) * (cover > 0.5)).astype(np.float32)
        else:
            cover = np.clip(1.0 - d / rng.uniform(0.6, 0.9), 0, 1).astype(np.float32)
            height = (rng.uniform(1.2, 2.0) * (cover > 0.2)).astype(np.float32)
    elif p.cls == WOODS:
        n_trees = max(4, int(h * w / rng.uniform(14, 22)))
        centres = np.column_stack([rng.uniform(-2, h + 2, n_trees), rng.uniform(-2, w + 2, n_trees)])
        radii = rng.uniform(2.0, 4.0, n_trees)
        tops = rng.uniform(10.0, 20.0, n_trees) * (rng.uniform(0.55, 1.0) if rng.random() < 0.3 else 1.0)
        species = np.array([lib.pick(rng, "woods") for _ in range(n_trees)], np.int16)
        tree = cKDTree(centres)
        dist, nearest = tree.query(np.column_stack([yy.ravel(), xx.ravel()]), k=3)
        shape = np.sqrt(np.clip(1 - (dist / radii[nearest]) ** 2, 0, 1))
        crown = tops[nearest] * (0.6 + 0.4 * shape) * (shape > 0)
        best = np.argmax(crown, axis=1)
        rows_i = np.arange(len(best))
        height = crown[rows_i, best].reshape(yy.shape).astype(np.float32)
        cover = np.clip(shape.max(axis=1) * 2.0, 0, 1).reshape(yy.shape).astype(np.float32)
        idx_c = species[nearest[rows_i, best]].reshape(yy.shape)
        idx_a[:] = lib.pick(rng, "dry")
    elif p.cls == BUILDINGS:
        cls[:] = GROUND
        labelled = blob & (rng.random() < 0.5) if p.labelled else np.zeros(yy.shape, bool)
        for _ in range(int(rng.integers(2, 7))):
            bh, bw = int(rng.integers(8, 24)), int(rng.integers(8, 24))
            if bh > h - 4 or bw > w - 4:
                continue
            by, bx = int(rng.integers(2, h - bh - 1)), int(rng.integers(2, w - bw - 1))
            inside = (yy >= by) & (yy < by + bh) & (xx >= bx) & (xx < bx + bw)
            inner = (yy >= by + 1) & (yy < by + bh - 1) & (xx >= bx + 1) & (xx < bx + bw - 1)
            roof = lib.pick(rng, "roof")
            height[inside] = rng.uniform(4.0, 15.0) + rng.normal(0, 0.05)
            cls[inside] = BUILDINGS
            idx_a[inside] = roof
            idx_b[inside] = roof if rng.random() < 0.7 else lib.pick(rng, "roof")
            labelled = np.where(inside, inner & (rng.random() < 0.85), labelled & ~inside)
    else:  # GROUND: soil and dry or sparse grass
        grass = rng.uniform(0.0, 0.35)
        cover = np.clip(grass + rng.normal(0, 0.08, yy.shape), 0, 1).astype(np.float32)
        idx_b[:] = lib.pick(rng, "soil") if rng.random() < 0.5 else lib.pick(rng, "dry")

    canvas.cls[rows, cols] = cls
    canvas.height[rows, cols] = height
    canvas.canopy[rows, cols] = cover
    canvas.idx_c[rows, cols] = idx_c
    canvas.idx_a[rows, cols] = idx_a
    canvas.idx_b[rows, cols] = idx_b
    canvas.labelled[rows, cols] = labelled


def _render_road(road: Road, lib: SpectralLibrary, canvas: Canvas, lo: int, hi: int, seed: int) -> None:
    r0, r1 = road.rows(lo, hi)
    if r1 <= r0 or road.c1 <= road.c0:
        return
    rng = np.random.default_rng([seed, 4, road.r0, road.c0])
    a, b = lib.pick(rng, road.material), lib.pick(rng, road.material)
    rows, cols = slice(r0 - lo, r1 - lo), slice(road.c0, road.c1)
    canvas.cls[rows, cols] = ROADS
    canvas.height[rows, cols] = 0.0
    canvas.canopy[rows, cols] = 0.0
    canvas.idx_a[rows, cols] = a
    canvas.idx_b[rows, cols] = b
    horizontal = (road.c1 - road.c0) > (road.r1 - road.r0)
    yy, xx = np.meshgrid(np.arange(r0, r1), np.arange(road.c0, road.c1), indexing="ij")
    along, across = (xx - road.c0, yy - road.r0) if horizontal else (yy - road.r0, xx - road.c0)
    width = (road.r1 - road.r0) if horizontal else (road.c1 - road.c0)
    label = np.zeros(yy.shape, bool)
    for start, stop in road.label_segments:
        label |= (along >= start) & (along < stop) & (across >= 1) & (across < width - 1)
    canvas.labelled[rows, cols] = label


def render_rows(layout: Layout, lib: SpectralLibrary, lo: int, hi: int, seed: int) -> Canvas:
    """The canvas of rows [lo, hi) of the scene (deterministic: independent of how rows are windowed)."""
    canvas = Canvas.empty(hi - lo, layout.width, int(lib.groups["soil"][0]))
    for p in layout.parcels:
        if p.r1 > lo and p.r0 < hi:
            _render_parcel(p, lib, canvas, lo, hi)
    for road in layout.roads:
        if road.r1 > lo and road.r0 < hi:
            _render_road(road, lib, canvas, lo, hi, seed)
    return canvas


def cast_shadow(height: np.ndarray, elevation_deg: float = 50.0, reach: int = HALO) -> np.ndarray:
    """True where a taller object lies towards the sun (south-east), blocking it."""
    rise = math.tan(math.radians(elevation_deg)) * math.sqrt(2.0)  # metres per diagonal step
    shadow = np.zeros(height.shape, bool)
    rows, cols = height.shape
    for k in range(1, reach + 1):
        blocker = np.full(height.shape, -np.inf, np.float32)
        blocker[: rows - k, : cols - k] = height[k:, k:]
        shadow |= blocker - height > k * rise
    return shadow


def _lambert(height: np.ndarray, elevation_deg: float = 50.0) -> np.ndarray:
    """Illumination of sloped surfaces (crowns) relative to flat ground, sun in the south-east."""
    dy, dx = np.gradient(height.astype(np.float64))
    el = math.radians(elevation_deg)
    sun = np.array([math.cos(el) / math.sqrt(2), -math.cos(el) / math.sqrt(2), math.sin(el)])  # (east, north, up)
    # rows grow southwards: the north component of the gradient is -dy.
    normal = np.stack([-dx, dy, np.ones_like(dx)])
    normal /= np.linalg.norm(normal, axis=0)
    cos_i = np.tensordot(sun, normal, axes=1)
    return np.clip(cos_i / math.sin(el), 0.3, 1.25).astype(np.float32)


# ----------------------------------------------------------------------------- availability geometry


def _scene_box(height: int, width: int) -> Polygon:
    left, top = ORIGIN
    return box(left, top - height * RESOLUTION, left + width * RESOLUTION, top)


def cloud_polygons(seed: int, height: int, width: int, fraction: float = 0.12) -> list[Polygon]:
    """Two or three lumpy cloud outlines (UTM) covering about ``fraction`` of the scene."""
    rng = np.random.default_rng([seed, 5])
    scene = _scene_box(height, width)
    left, bottom, right, top = scene.bounds
    shapes = []
    n = int(rng.integers(2, 4))
    for _ in range(n):
        cx, cy = rng.uniform(left + 0.1 * (right - left), right - 0.1 * (right - left)), rng.uniform(bottom, top)
        theta = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        radius = np.ones_like(theta)
        for harmonic in (2, 3, 5):
            radius += rng.uniform(0.05, 0.2) * np.cos(harmonic * theta + rng.uniform(0, 2 * np.pi))
        stretch = rng.uniform(1.2, 2.0)  # clouds elongated along the wind
        shapes.append(Polygon(np.column_stack([cx + stretch * radius * np.cos(theta), cy + radius * np.sin(theta)])))

    def covered(scale: float) -> float:
        scaled = [affinity.scale(s, scale, scale, origin="centroid") for s in shapes]
        return unary_union(scaled).intersection(scene).area / scene.area

    lo, hi = 0.1, 2 * math.sqrt(scene.area)
    for _ in range(60):  # bisection on the outline scale for the coverage asked for
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if covered(mid) < fraction else (lo, mid)
    return [affinity.scale(s, hi, hi, origin="centroid") for s in shapes]


def lidar_gap_polygon(seed: int, height: int, width: int, fraction: float = 0.10) -> Polygon:
    """A slanted north-south strip (UTM) where the LiDAR was never flown."""
    rng = np.random.default_rng([seed, 6])
    left, top = ORIGIN
    w = fraction * width * RESOLUTION
    x_top = left + rng.uniform(0.2, 0.75) * width * RESOLUTION
    slant = rng.uniform(-0.08, 0.08) * width * RESOLUTION
    bottom = top - height * RESOLUTION
    return Polygon([(x_top, top + 5), (x_top + w, top + 5), (x_top + w + slant, bottom - 5), (x_top + slant, bottom - 5)])


def polygons_to_lonlat(polygons: list[Polygon], crs: str) -> list[Polygon]:
    """``polygons`` in ``crs`` reprojected to longitude/latitude (EPSG:4326), as operators deliver footprints."""
    to_lonlat = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    return [shapely.transform(p, lambda xy: np.column_stack(to_lonlat.transform(xy[:, 0], xy[:, 1]))) for p in polygons]


def _write_lonlat(polygons: list[Polygon], path: Path, properties: dict[str, list]) -> None:
    geometries = polygons_to_lonlat(polygons, CRS)
    frame = gpd.GeoDataFrame(properties, geometry=geometries, crs="EPSG:4326")
    with atomic_file(path) as tmp:
        frame.to_file(tmp, driver="GeoJSON")


# ----------------------------------------------------------------------------- writing


def _open_tif(path: Path, height: int, width: int, count: int, dtype: str, nodata: float | None) -> rasterio.io.DatasetWriter:
    transform = Affine(RESOLUTION, 0.0, ORIGIN[0], 0.0, -RESOLUTION, ORIGIN[1])
    return rasterio.open(
        path, "w", driver="GTiff", height=height, width=width, count=count, dtype=dtype, crs=CRS,
        transform=transform, nodata=nodata, tiled=True, blockxsize=128, blockysize=128, compress="deflate",
        interleave="pixel" if count < 8 else "band",
    )


def generate_demo_scene(folder: Path, seed: int = 0, height: int = 166, width: int = 600) -> dict[str, Path]:
    """Write the demo scene's files into ``folder`` (names in :data:`FILES`); returns them by role.

    Rasters are written window by window (:data:`WINDOW_ROWS` rows), each file under a
    temporary name first, so a partly written scene never looks complete.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lib = load_library(seed)
    layout = make_layout(seed, height, width)
    clouds = cloud_polygons(seed, height, width)
    gap = lidar_gap_polygon(seed, height, width)
    paths = {role: folder / name for role, name in FILES.items()}
    cloud_spectrum = (0.62 + 0.12 * (WAVELENGTHS.max() - WAVELENGTHS) / (WAVELENGTHS.max() - WAVELENGTHS.min())).astype("float32")
    with file_set(folder, list(FILES.values())) as staged:  # all files appear together, when complete
        tmp = {role: staged[name] for role, name in FILES.items()}
        with (
            _open_tif(tmp["hs"], height, width, len(WAVELENGTHS), "float32", None) as hs,
            _open_tif(tmp["lidar"], height, width, 2, "float32", LIDAR_NODATA) as lidar,
            _open_tif(tmp["labels"], height, width, 1, "uint8", 0) as labels,
        ):
            for b, wl in enumerate(WAVELENGTHS, start=1):
                hs.update_tags(b, wavelength=f"{wl:.2f}", wavelength_units="nm")
                hs.set_band_description(b, f"{wl:.1f} nm")
            lidar.set_band_description(1, "height above ground (m)")
            lidar.set_band_description(2, "intensity")
            labels.write_colormap(1, {v: (*_rgb(c), 255) for v, (_n, c) in CLASSES.items()})
            for r0 in range(0, height, WINDOW_ROWS):
                r1 = min(r0 + WINDOW_ROWS, height)
                _write_window(r0, r1, layout, lib, clouds, gap, cloud_spectrum, seed, hs, lidar, labels)
        _write_lonlat(clouds, tmp["clouds"], {"kind": ["cloud"] * len(clouds)})
        _write_lonlat([gap], tmp["lidar_gap"], {"modality": ["lidar"], "reason": ["strip never flown"]})
    log.info("demo scene (%d x %d, seed %d) written to %s", height, width, seed, folder)
    return paths


def _rgb(color: str) -> tuple[int, int, int]:
    return int(color[1:3], 16), int(color[3:5], 16), int(color[5:7], 16)


def _write_window(r0, r1, layout, lib, clouds, gap, cloud_spectrum, seed, hs, lidar, labels) -> None:
    width = layout.width
    lo, hi = max(0, r0 - HALO), min(layout.height, r1 + HALO)
    canvas = render_rows(layout, lib, lo, hi, seed)
    shade = np.where(cast_shadow(canvas.height), 0.35, 1.0).astype(np.float32) * _lambert(canvas.height)
    keep = slice(r0 - lo, r1 - lo)
    c = Canvas(*(getattr(canvas, f)[keep] for f in ("cls", "height", "canopy", "idx_c", "idx_a", "idx_b", "labelled")))
    shade = shade[keep]
    rng = np.random.default_rng([seed, 7, r0])
    rows = r1 - r0
    mix = rng.beta(2.0, 2.0, size=(rows, width)).astype(np.float32)
    S = lib.spectra
    background = mix[..., None] * S[c.idx_a] + (1 - mix[..., None]) * S[c.idx_b]
    reflectance = c.canopy[..., None] * S[c.idx_c] + (1 - c.canopy[..., None]) * background
    brightness = rng.lognormal(0.0, 0.06, size=(rows, width)).astype(np.float32)
    radiance = reflectance * (shade * brightness)[..., None]
    radiance += rng.normal(0.0, 1.0, radiance.shape).astype(np.float32) * (0.004 + 0.015 * radiance)

    window = Window(0, r0, width, rows)
    window_transform = rasterio.windows.transform(window, hs.transform)
    cloud = features.rasterize(clouds, out_shape=(rows, width), transform=window_transform, fill=0, dtype="uint8") > 0
    thickness = np.clip(rng.normal(0.9, 0.06, size=(rows, width)), 0.7, 1.0).astype(np.float32)[..., None]
    radiance = np.where(cloud[..., None], thickness * cloud_spectrum + (1 - thickness) * radiance, radiance)
    hs.write(np.clip(radiance, 0, None).astype("float32").transpose(2, 0, 1), window=window)

    r_1064 = c.canopy * lib.r1064[c.idx_c] + (1 - c.canopy) * (mix * lib.r1064[c.idx_a] + (1 - mix) * lib.r1064[c.idx_b])
    intensity = 2600.0 * r_1064 * rng.lognormal(0.0, 0.1, size=(rows, width))
    height = np.clip(c.height + rng.normal(0.0, 0.12, size=(rows, width)), 0.0, None)
    not_flown = features.rasterize([gap], out_shape=(rows, width), transform=window_transform, fill=0, dtype="uint8") > 0
    dropout = (c.cls == BUILDINGS) & (rng.random((rows, width)) < 0.01)  # dark roofs returning no echo
    missing = not_flown | dropout
    lidar.write(
        np.stack([np.where(missing, LIDAR_NODATA, height), np.where(missing, LIDAR_NODATA, intensity)]).astype("float32"),
        window=window,
    )
    labels.write(np.where(c.labelled, c.cls, 0).astype("uint8")[None], window=window)


# ----------------------------------------------------------------------------- catalog hook


DEMO_CATALOG = Path(__file__).resolve().parents[2] / "catalogs" / "demo.yaml"


def demo_catalog_dict(scene_folder: Path, output_folder: Path, **sections: Any) -> dict[str, Any]:
    """``catalogs/demo.yaml`` pointed at generated scene files in ``scene_folder`` (any size, any seed).

    Every path of the scene (sources, clouds, footprints, labels) is re-pointed by file
    name, ``generate`` is dropped (the files exist) and the output goes to
    ``output_folder``; ``sections`` update the top-level sections, e.g.
    ``model={"method": "baseline"}``. Tests and benchmarks build their catalogs with it.
    """
    data = yaml.safe_load(DEMO_CATALOG.read_text())
    scene = data["scenes"][0]
    scene.pop("generate", None)
    folder = Path(scene_folder)

    def here(path: str) -> str:
        return str(folder / Path(path).name)

    for modality in scene["modalities"]:
        modality["source"]["path"] = here(modality["source"]["path"])
    for cloud in scene["availability"]["clouds"]:
        cloud["path"] = here(cloud["path"])
    for failure in scene["availability"]["failures"]:
        if "footprint" in failure:
            failure["footprint"] = here(failure["footprint"])
    scene["labels"]["source"]["path"] = here(scene["labels"]["source"]["path"])
    data["output"]["folder"] = str(output_folder)
    for section, values in sections.items():
        data.setdefault(section, {}).update(copy.deepcopy(values))
    return data


def ensure_demo_data(scene: Scene, catalog_file: Path | None = None, seed: int = 0) -> None:
    """Generate a ``generate: demo`` scene's files when any is missing, into its first source's folder."""
    if scene.generate != "demo":
        return
    files = scene.files()
    if all(f.exists() for f in files):
        return
    folder = scene.modalities[0].source.files[0].parent
    log.info("generating the demo scene into %s", folder)
    generate_demo_scene(local_path(folder), seed=seed)  # the generator writes local files
    for f in files:
        if not f.exists():
            raise CatalogError(
                catalog_file, f"scenes[{scene.name!r}]", f"files the demo generator writes ({sorted(FILES.values())}) in {folder}",
                f"{f}",
            )


def ensure_generated_sources(catalog: Catalog) -> None:
    """Generate the files of every scene of ``catalog`` marked ``generate`` (the demo) that are missing."""
    for scene in catalog.scenes:
        ensure_demo_data(scene, catalog.path)
