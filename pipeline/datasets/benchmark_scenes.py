"""Benchmark scenes harder than the demo, built from real pieces in ``../shared/data``.

The public HS cubes cannot be downloaded here; their LiDAR rasters and ground
truth can. A benchmark scene keeps the real LiDAR (height, intensity) and the
real ground truth (real class layout, small classes, real class sizes) and
synthesises the HS cube from real reflectance spectra of each class's
materials:

* ``muufl``: MUUFL Gulfport (325 x 220, 11 classes), HS at 64 bands over
  375-1050 nm from the MUUFL field spectra (ASD, measured on site;
  ``muufl/field_spectra``). Water has no field spectrum: a dark spectrum falling
  to ~1 % in the NIR stands in for it.
* ``trento``: Trento (166 x 600, 6 classes), HS at 63 bands over 402-989 nm
  from the earthlib library groups the demo uses (``pipeline.datasets.demo``).

Each pixel draws one measured spectrum of its class's materials, mixed with a
spectrum of a neighbouring pixel's class (edges and sub-pixel mixing), a
smooth illumination field, shade from the LiDAR height and sensor noise.
Unlabelled pixels take the class of the nearest labelled pixel. A cloud field
(spatially coherent blobs, ~15 % of the scene) hides the HS (the cloud's
spectrum is written there, the footprint as polygons in EPSG:4326) and a
slanted strip (~12 %) of LiDAR was never flown (nodata, a failure footprint).
The scenes carry a declared georeference (the .mat files carry none).

``python -m pipeline.datasets build-benchmark muufl --dest data/muufl-bench``
writes the files; ``catalogs/<name>-bench.yaml`` reads them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
from affine import Affine
from rasterio import features
from scipy import ndimage
from shapely.geometry import shape

from pipeline.config.errors import InputError
from pipeline.datasets.demo import polygons_to_lonlat
from pipeline.files import file_set

log = logging.getLogger(__name__)

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
LIDAR_NODATA = -9999.0
FILES = {"hs": "hs.tif", "lidar": "lidar.tif", "labels": "labels.tif", "clouds": "clouds.geojson", "lidar_gap": "lidar_gap.geojson"}


@dataclass(frozen=True)
class BenchmarkRecipe:
    """What one benchmark scene is made of."""

    name: str
    lidar: tuple[str, str]  # file under shared/data, .mat key: (H, W, 2) height, intensity
    truth: tuple[str, str]  # file, .mat key: (H, W) uint8 class values, 0 unlabelled
    crs: str
    origin: tuple[float, float]  # upper-left corner in ``crs``
    wavelengths: np.ndarray
    spectra: Callable[[np.ndarray, np.random.Generator], dict[int, np.ndarray]]  # class value -> (n, bands) reflectance


# ----------------------------------------------------------------------------- spectra


def read_asd_folder(folder: Path, wavelengths: np.ndarray) -> np.ndarray:
    """Every measurement of an ASD_Spectra material folder, resampled to ``wavelengths`` (n, bands)."""
    spectra = []
    for file in sorted(folder.glob("*.txt")):
        numbers = np.atleast_2d(np.loadtxt(file, converters=lambda cell: float(cell.strip(",")), dtype=float))
        wl, refl = numbers[:, 0::2], numbers[:, 1::2]
        for column in range(refl.shape[1]):
            spectra.append(np.interp(wavelengths, wl[:, column], refl[:, column]))
    if not spectra:
        raise InputError(folder, "(files)", "ASD spectra (*.txt, wavelength, reflectance pairs)", "none")
    return np.clip(np.asarray(spectra, dtype=np.float32), 0.0, 1.0)


MUUFL_MATERIALS: dict[int, tuple[str, ...]] = {
    1: ("LiveOakLeaves", "FriendshipOak", "LeavesBarkMixed"),  # trees
    2: ("GrassByBuilding", "GrassClumpInSun", "PsuedoGreenbyBldg"),  # mostly grass
    3: ("GroundLitter", "DeadWees", "DriedLeaves", "Dirt"),  # mixed ground surface
    4: ("SandInSun", "BeachSand", "Dirt"),  # dirt and sand
    5: ("Asphalt",),  # road
    7: ("Building", "Asphalt", "Sidewalk"),  # building shadow: scaled to shade below
    8: ("Building", "ConcreteAndMetalSquare", "Pillar"),  # buildings
    9: ("Sidewalk",),
    10: ("YellowCurb",),
    11: ("RedCloth", "BlueCloth", "GreenCloth", "BlackCloth"),  # cloth panels
}
MUUFL_WATER, MUUFL_SHADOW = 6, 7


def muufl_spectra(wavelengths: np.ndarray, rng: np.random.Generator) -> dict[int, np.ndarray]:
    root = SHARED_DATA / "muufl" / "field_spectra" / "ASD_Spectra"
    table = {value: np.concatenate([read_asd_folder(root / m, wavelengths) for m in materials])
             for value, materials in MUUFL_MATERIALS.items()}
    table[MUUFL_SHADOW] = table[MUUFL_SHADOW] * 0.18
    nir = np.clip((wavelengths - 700.0) / 100.0, 0.0, 1.0)
    water = (0.07 - 0.06 * nir) * (1.0 - 0.3 * (wavelengths - wavelengths.min()) / np.ptp(wavelengths))
    table[MUUFL_WATER] = (water[None] * rng.uniform(0.8, 1.2, size=(6, 1))).astype(np.float32)
    return table


TRENTO_GROUPS: dict[int, tuple[str, ...]] = {
    1: ("apple",), 2: ("roof",), 3: ("soil", "dry"), 4: ("woods",), 5: ("vine",), 6: ("asphalt", "gravel"),
}


def trento_spectra(wavelengths: np.ndarray, rng: np.random.Generator) -> dict[int, np.ndarray]:
    from pipeline.datasets.demo import load_library

    lib = load_library(int(rng.integers(0, 2**31)), wavelengths)
    return {value: lib.spectra[np.concatenate([lib.groups[g] for g in groups])] for value, groups in TRENTO_GROUPS.items()}


RECIPES: dict[str, BenchmarkRecipe] = {
    "muufl": BenchmarkRecipe(
        "muufl", ("muufl/LiDAR.mat", "LiDAR"), ("muufl/gt.mat", "gt"), "EPSG:32616", (294000.0, 3359000.0),
        np.round(np.linspace(375.0, 1050.0, 64), 2), muufl_spectra),
    "trento": BenchmarkRecipe(
        "trento", ("trento/Italy_lidar.mat", "data"), ("trento/allgrd.mat", "mask_test"), "EPSG:32632", (664000.0, 5104000.0),
        np.round(np.linspace(402.0, 989.0, 63), 2), trento_spectra),
}


# ----------------------------------------------------------------------------- scene


def _read_mat(path: Path, key: str) -> np.ndarray:
    from pipeline.data.sources.mat import _load, _variables

    if not path.is_file():
        raise InputError(path, "(file)", "the shared benchmark piece (see ../shared/data/README.md)", "no such file")
    names, hdf5 = _variables(path)
    if key not in names:
        raise InputError(path, key, f"an array named {key!r}", f"arrays {names}")
    return _load(path, key, hdf5)


def smooth_field(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Spatially coherent noise: white noise under a Gaussian blur, scaled to zero mean and unit std."""
    field = ndimage.gaussian_filter(rng.normal(size=shape), sigma)
    return (field - field.mean()) / (field.std() + 1e-12)


def cloud_mask(rng: np.random.Generator, shape: tuple[int, int], fraction: float = 0.15) -> np.ndarray:
    """Blobs covering ``fraction`` of the scene: the top quantile of a smooth field."""
    field = smooth_field(rng, shape, sigma=max(shape) / 18)
    return field > np.quantile(field, 1.0 - fraction)


def strip_mask(rng: np.random.Generator, shape: tuple[int, int], fraction: float = 0.12) -> np.ndarray:
    """A slanted strip across the scene along its longer side, ``fraction`` of the other side wide."""
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]]
    along, across = (rows, cols) if shape[0] >= shape[1] else (cols, rows)
    span = shape[1] if shape[0] >= shape[1] else shape[0]
    start = rng.uniform(0.2, 0.7) * span
    slant = rng.uniform(-0.1, 0.1) * span / max(shape)
    offset = across - (start + slant * along)
    return (offset >= 0) & (offset < fraction * span)


def _polygons_lonlat(mask: np.ndarray, transform: Affine, crs: str) -> list:
    polygons = [shape(geom) for geom, value in features.shapes(mask.astype("uint8"), mask=mask, transform=transform) if value]
    return polygons_to_lonlat(polygons, crs)


def synthesise_hs(truth: np.ndarray, height: np.ndarray, recipe: BenchmarkRecipe, rng: np.random.Generator) -> np.ndarray:
    """A (bands, H, W) reflectance cube from the class map (see the module docstring)."""
    spectra = recipe.spectra(recipe.wavelengths, rng)
    labelled = truth > 0
    nearest = ndimage.distance_transform_edt(~labelled, return_distances=False, return_indices=True)
    classes = truth[tuple(nearest)]
    shape2 = classes.shape
    own = np.zeros((*shape2, len(recipe.wavelengths)), dtype=np.float32)
    for value, table in spectra.items():
        where = classes == value
        own[where] = table[rng.integers(0, len(table), size=int(where.sum()))]
    # A neighbour's spectrum mixed in: a pixel a few metres away, up to 40 % (edges, sub-pixel mixing).
    dy, dx = rng.integers(-3, 4, size=shape2), rng.integers(-3, 4, size=shape2)
    yy, xx = np.indices(shape2)
    neighbour = own[np.clip(yy + dy, 0, shape2[0] - 1), np.clip(xx + dx, 0, shape2[1] - 1)]
    mix = np.minimum(rng.beta(1.2, 4.0, size=shape2), 0.4).astype(np.float32)[..., None]
    reflectance = (1 - mix) * own + mix * neighbour
    illumination = 1.0 + 0.12 * smooth_field(rng, shape2, sigma=12.0)
    finite_height = np.where(np.isfinite(height), height, 0.0)
    slope = np.hypot(*np.gradient(ndimage.gaussian_filter(finite_height, 1.0)))
    shade = 1.0 / (1.0 + 0.25 * slope)
    radiance = reflectance * (illumination * shade * rng.lognormal(0.0, 0.08, size=shape2))[..., None]
    radiance += rng.normal(0.0, 1.0, radiance.shape).astype(np.float32) * (0.006 + 0.02 * radiance)
    return np.clip(radiance, 0.0, None).astype(np.float32).transpose(2, 0, 1)


def _write_tif(path: Path, data: np.ndarray, transform: Affine, crs: str, nodata: float | None) -> rasterio.io.DatasetWriter:
    count, rows, cols = data.shape
    with rasterio.open(path, "w", driver="GTiff", height=rows, width=cols, count=count, dtype=str(data.dtype), crs=crs,
                       transform=transform, nodata=nodata, tiled=True, blockxsize=128, blockysize=128,
                       compress="deflate", interleave="pixel" if count < 8 else "band") as dst:
        dst.write(data)
    return path


def build_benchmark_scene(name: str, dest: Path, seed: int = 0, shared: Path | None = None) -> dict[str, Path]:
    """Write benchmark scene ``name`` (a key of :data:`RECIPES`) into ``dest``; returns its files by role.

    Every file is written under a temporary name and moved into place when all are complete.
    """
    if name not in RECIPES:
        raise InputError(None, "name", f"one of {sorted(RECIPES)}", repr(name))
    recipe = RECIPES[name]
    root = shared or SHARED_DATA
    lidar = _read_mat(root / recipe.lidar[0], recipe.lidar[1]).astype(np.float32)
    truth = _read_mat(root / recipe.truth[0], recipe.truth[1]).astype(np.uint8)
    if lidar.ndim != 3 or lidar.shape[:2] != truth.shape:
        raise InputError(root / recipe.lidar[0], recipe.lidar[1], f"(H, W, bands) on the ground truth's {truth.shape}", str(lidar.shape))
    lidar = lidar[..., :2]
    rng = np.random.default_rng([seed, 14])
    shape2 = truth.shape
    transform = Affine(1.0, 0.0, recipe.origin[0], 0.0, -1.0, recipe.origin[1])
    hs = synthesise_hs(truth, lidar[..., 0], recipe, rng)
    clouds = cloud_mask(rng, shape2)
    cloud_spectrum = (0.6 + 0.12 * (recipe.wavelengths.max() - recipe.wavelengths) / np.ptp(recipe.wavelengths)).astype(np.float32)
    thickness = np.clip(rng.normal(0.9, 0.06, size=shape2), 0.7, 1.0).astype(np.float32)
    hs = np.where(clouds[None], thickness[None] * cloud_spectrum[:, None, None] + (1 - thickness[None]) * hs, hs)
    gap = strip_mask(rng, shape2)
    lidar_out = np.where(gap[None], LIDAR_NODATA, lidar.transpose(2, 0, 1)).astype(np.float32)

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    paths = {role: dest / file for role, file in FILES.items()}
    with file_set(dest, list(FILES.values())) as staged:  # all files appear together, when complete
        tmp = {role: staged[file] for role, file in FILES.items()}
        _write_tif(tmp["hs"], hs, transform, recipe.crs, None)
        with rasterio.open(tmp["hs"], "r+") as dst:
            for b, wl in enumerate(recipe.wavelengths, start=1):
                dst.update_tags(b, wavelength=f"{wl:.2f}", wavelength_units="nm")
        _write_tif(tmp["lidar"], lidar_out, transform, recipe.crs, LIDAR_NODATA)
        _write_tif(tmp["labels"], truth[None], transform, recipe.crs, 0)
        for role, mask, props in (("clouds", clouds, {"kind": "cloud"}), ("lidar_gap", gap, {"modality": "lidar", "reason": "strip never flown"})):
            polygons = _polygons_lonlat(mask, transform, recipe.crs)
            frame = gpd.GeoDataFrame({k: [v] * len(polygons) for k, v in props.items()}, geometry=polygons, crs="EPSG:4326")
            frame.to_file(tmp[role], driver="GeoJSON")
    log.info("benchmark scene %s (%d x %d, seed %d) written to %s", name, *shape2, seed, dest)
    return paths
