"""Availability masks on small real scenes: UTM cubes, GeoJSON/GeoPackage polygons, GeoTIFF cloud rasters."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
import xarray as xr
from pyproj import Transformer
from rasterio.transform import from_origin
from shapely.geometry import Polygon

from pipeline.config.catalog import CloudMask, Scene, parse_catalog
from pipeline.config.errors import InputError
from pipeline.data.availability import (
    cloud_mask,
    failure_mask,
    pattern_codes,
    pattern_counts,
    scene_availability,
)

# rioxarray 0.19 computes transforms with affine's ``*``, which affine 3.x marks pending deprecation.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Use `@` matmul instead of `\\*` mul operator:PendingDeprecationWarning"
)

CRS = "EPSG:32632"
X0, Y0 = 652_000.0, 5_102_000.0  # upper-left corner of the scene, metres (UTM 32N, near Trento)
HEIGHT, WIDTH = 50, 80  # pixels of 1 m
BANDS = {"hs": 4, "lidar": 2, "sar": 3}
KINDS = {"hs": "hs", "lidar": "lidar", "sar": "sar"}


def pixel_centres() -> tuple[np.ndarray, np.ndarray]:
    """Easting and northing of every pixel centre, (HEIGHT, WIDTH) each."""
    x = X0 + 0.5 + np.arange(WIDTH)
    y = Y0 - 0.5 - np.arange(HEIGHT)
    return np.meshgrid(x, y)


def cube(name: str, seed: int = 0) -> xr.DataArray:
    """A float32 (band_<name>, y, x) cube on the scene grid, with its CRS."""
    values = np.random.default_rng(seed).random((BANDS[name], HEIGHT, WIDTH), dtype=np.float32)
    da = xr.DataArray(
        values,
        dims=(f"band_{name}", "y", "x"),
        coords={
            f"band_{name}": np.arange(1, BANDS[name] + 1),
            "y": Y0 - 0.5 - np.arange(HEIGHT),
            "x": X0 + 0.5 + np.arange(WIDTH),
        },
        name=name,
    )
    return da.rio.write_crs(CRS)


def make_scene(
    tmp_path: Path, names: list[str], availability: dict | None = None, acquired: dict | None = None
) -> Scene:
    """A catalog scene (parsed from a mapping, paths relative to ``tmp_path``)."""
    modalities = []
    for name in names:
        entry = {"name": name, "kind": KINDS[name], "source": {"path": f"{name}.tif"}}
        if acquired and name in acquired:
            entry["acquired"] = acquired[name]
        if name == "lidar":
            entry["nodata"] = -9999.0
        modalities.append(entry)
    data = {
        "name": "test",
        "scenes": [
            {
                "name": "demo",
                "modalities": modalities,
                "grid": {"from_modality": names[0]},
                "availability": availability or {},
            }
        ],
    }
    return parse_catalog(data, tmp_path / "catalog.yaml").scenes[0]


def utm_to_lonlat(polygon: Polygon) -> Polygon:
    to_wgs84 = Transformer.from_crs(CRS, "EPSG:4326", always_xy=True)
    lon, lat = to_wgs84.transform(*np.asarray(polygon.exterior.coords).T)
    return Polygon(zip(lon, lat))


# An irregular polygon in UTM metres; no vertex or edge passes through a pixel centre.
CLOUD_UTM = Polygon(
    [
        (X0 + 10.3, Y0 - 5.2),
        (X0 + 47.9, Y0 - 8.1),
        (X0 + 61.2, Y0 - 31.7),
        (X0 + 33.6, Y0 - 44.4),
        (X0 + 7.3, Y0 - 27.6),
    ]
)


def write_geojson_4326(path: Path, polygons: list[Polygon]) -> Path:
    geometry = [utm_to_lonlat(p) for p in polygons]
    frame = gpd.GeoDataFrame({"id": range(len(polygons))}, geometry=geometry, crs="EPSG:4326")
    frame.to_file(path, driver="GeoJSON")
    return path


def expected_cover(polygon: Polygon) -> np.ndarray:
    x, y = pixel_centres()
    return shapely.contains_xy(polygon, x, y)


# --------------------------------------------------------------------------- clouds: vector


def test_cloud_polygon_in_4326_masks_exactly_the_pixels_whose_centres_it_covers(tmp_path: Path) -> None:
    path = write_geojson_4326(tmp_path / "clouds.geojson", [CLOUD_UTM])
    mask = cloud_mask(CloudMask(path=path), cube("hs"))

    expected = expected_cover(CLOUD_UTM)
    assert mask.dims == ("y", "x") and mask.dtype == bool
    assert 500 < expected.sum() < HEIGHT * WIDTH / 2  # a real, partial cover
    np.testing.assert_array_equal(mask.values, expected)
    assert mask.rio.crs.to_string() == CRS


def test_cloud_polygons_hide_the_optical_modalities_only(tmp_path: Path) -> None:
    path = write_geojson_4326(tmp_path / "clouds.geojson", [CLOUD_UTM])
    scene = make_scene(tmp_path, ["hs", "lidar"], {"clouds": [{"path": "clouds.geojson"}]})
    available = scene_availability({"hs": cube("hs"), "lidar": cube("lidar")}, scene)

    assert available.dims == ("modality", "y", "x")
    assert list(available["modality"].values) == ["hs", "lidar"]
    np.testing.assert_array_equal(available.sel(modality="hs").values, ~expected_cover(CLOUD_UTM))
    assert available.sel(modality="lidar").values.all()
    assert available.rio.crs.to_string() == CRS
    assert path.exists()


def test_cloud_applies_to_sar_when_the_catalog_says_so(tmp_path: Path) -> None:
    write_geojson_4326(tmp_path / "clouds.geojson", [CLOUD_UTM])
    clouds = [{"path": "clouds.geojson", "applies_to": ["sar"]}]
    scene = make_scene(tmp_path, ["hs", "lidar", "sar"], {"clouds": clouds})
    available = scene_availability({n: cube(n) for n in ("hs", "lidar", "sar")}, scene)

    assert available.sel(modality="hs").values.all()
    assert available.sel(modality="lidar").values.all()
    np.testing.assert_array_equal(available.sel(modality="sar").values, ~expected_cover(CLOUD_UTM))


def test_vector_without_crs_uses_the_catalog_crs_or_fails_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "clouds.gpkg"
    with pytest.warns(UserWarning, match="'crs' was not provided"):
        gpd.GeoDataFrame({"id": [0]}, geometry=[CLOUD_UTM], crs=None).to_file(path, driver="GPKG")

    with pytest.raises(InputError) as info:
        cloud_mask(CloudMask(path=path), cube("hs"), key="scenes['demo'].availability.clouds[0]")
    assert "clouds.gpkg" in str(info.value) and "scenes['demo'].availability.clouds[0].path" in str(info.value)

    mask = cloud_mask(CloudMask(path=path, crs=CRS), cube("hs"))
    np.testing.assert_array_equal(mask.values, expected_cover(CLOUD_UTM))


def test_missing_or_unreadable_cloud_file_is_an_input_error(tmp_path: Path) -> None:
    scene = make_scene(tmp_path, ["hs", "lidar"], {"clouds": [{"path": "nowhere.geojson"}]})
    with pytest.raises(InputError, match=r"nowhere\.geojson.*scenes\['demo'\]\.availability\.clouds\[0\]\.path"):
        scene_availability({"hs": cube("hs"), "lidar": cube("lidar")}, scene)

    broken = tmp_path / "broken.tif"
    broken.write_text("not a raster")
    with pytest.raises(InputError, match="broken.tif"):
        cloud_mask(CloudMask(path=broken), cube("hs"))


# --------------------------------------------------------------------------- clouds: raster


def write_raster(
    path: Path, values: np.ndarray, x0: float, y0: float, resolution: float, crs: str | None = CRS
) -> Path:
    profile = {
        "driver": "GTiff",
        "height": values.shape[0],
        "width": values.shape[1],
        "count": 1,
        "dtype": values.dtype,
        "transform": from_origin(x0, y0, resolution, resolution),
    }
    if crs is not None:
        profile["crs"] = crs
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(values, 1)
    return path


def test_cloud_probability_at_3_m_is_resampled_bilinearly_and_thresholded(tmp_path: Path) -> None:
    # Probability rising linearly with easting, p = (x - X0) / 80, on a 3 m grid that
    # extends 6 m beyond the scene. Bilinear resampling reproduces a linear field at
    # the 1 m pixel centres, so cloud (p > 0.5) is exactly x_centre > X0 + 40: columns
    # 40..79. Nearest-neighbour would also mark column 39 (its 3 m source centre is
    # at X0 + 40.5), so the test tells the two apart.
    left, top = X0 - 6.0, Y0 + 6.0
    cols, rows = 31, 22
    centres_x = left + 1.5 + 3.0 * np.arange(cols)
    probability = np.tile(((centres_x - X0) / 80.0).astype(np.float32), (rows, 1))
    path = write_raster(tmp_path / "cloud_prob.tif", probability, left, top, 3.0)

    mask = cloud_mask(CloudMask(path=path, threshold=0.5), cube("hs"))

    x, _ = pixel_centres()
    np.testing.assert_array_equal(mask.values, x > X0 + 40.0)
    assert mask.values[:, 39].sum() == 0 and mask.values[:, 40].all()


def test_cloud_probability_in_percent_with_a_catalog_threshold(tmp_path: Path) -> None:
    left, top = X0 - 6.0, Y0 + 6.0
    centres_y = top - 1.5 - 3.0 * np.arange(22)
    percent = np.tile(((Y0 - centres_y) / 50.0 * 100.0)[:, None], (1, 31)).astype(np.float32)  # 0 at top, 100 at bottom
    path = write_raster(tmp_path / "cloud_pct.tif", percent, left, top, 3.0)

    mask = cloud_mask(CloudMask(path=path, threshold=30.0), cube("hs"))

    _, y = pixel_centres()
    np.testing.assert_array_equal(mask.values, (Y0 - y) / 50.0 * 100.0 > 30.0)


def test_boolean_cloud_raster_at_2_m_is_resampled_nearest(tmp_path: Path) -> None:
    blocks = np.zeros((HEIGHT // 2, WIDTH // 2), dtype=np.uint8)
    blocks[3:9, 5:17] = 1
    blocks[15, 30] = 1
    path = write_raster(tmp_path / "cloud_mask.tif", blocks, X0, Y0, 2.0)

    mask = cloud_mask(CloudMask(path=path), cube("hs"))

    np.testing.assert_array_equal(mask.values, np.kron(blocks, np.ones((2, 2), dtype=np.uint8)).astype(bool))


def test_cloud_raster_outside_the_scene_or_without_crs_is_an_input_error(tmp_path: Path) -> None:
    far = write_raster(tmp_path / "far.tif", np.ones((10, 10), dtype=np.float32) * 0.9, X0 + 10_000, Y0, 3.0)
    with pytest.raises(InputError, match="overlaps the scene"):
        cloud_mask(CloudMask(path=far), cube("hs"))

    bare = write_raster(tmp_path / "bare.tif", np.ones((10, 10), dtype=np.float32) * 0.9, X0, Y0, 3.0, crs=None)
    with pytest.raises(InputError, match="bare.tif.*CRS"):
        cloud_mask(CloudMask(path=bare), cube("hs"))


# --------------------------------------------------------------------------- nodata and failures


def test_nan_and_nodata_make_a_pixel_unavailable_for_that_modality_only(tmp_path: Path) -> None:
    scene = make_scene(tmp_path, ["hs", "lidar"])
    hs, lidar = cube("hs"), cube("lidar")
    hs[2, 10, 20] = np.nan  # one band missing is enough
    lidar[:, 30, 40] = -9999.0  # the catalog's nodata
    lidar[1, 31, 41] = -9999.0

    available = scene_availability({"hs": hs, "lidar": lidar}, scene).values

    assert not available[0, 10, 20] and available[1, 10, 20]
    assert not available[1, 30, 40] and not available[1, 31, 41] and available[0, 30, 40]
    assert available.sum() == 2 * HEIGHT * WIDTH - 3


def test_time_window_failure_masks_only_the_modality_acquired_inside_it(tmp_path: Path) -> None:
    acquired = {"hs": "2024-06-01T10:30:00Z", "lidar": "2024-07-15T09:00:00"}
    window = {"start": "2024-05-30T00:00:00Z", "end": "2024-06-02T00:00:00Z"}
    failures = [{"modality": "hs", **window, "reason": "detector"}, {"modality": "lidar", **window}]
    scene = make_scene(tmp_path, ["hs", "lidar"], {"failures": failures}, acquired)

    available = scene_availability({"hs": cube("hs"), "lidar": cube("lidar")}, scene)

    assert not available.sel(modality="hs").values.any()
    assert available.sel(modality="lidar").values.all()


def test_footprint_failure_within_a_window(tmp_path: Path) -> None:
    strip = Polygon([(X0 + 20.2, Y0 + 1), (X0 + 35.8, Y0 + 1), (X0 + 35.8, Y0 - 51), (X0 + 20.2, Y0 - 51)])
    gpd.GeoDataFrame({"id": [0]}, geometry=[strip], crs=CRS).to_file(tmp_path / "gap.gpkg", driver="GPKG")
    acquired = {"hs": "2024-06-01T10:30:00", "lidar": "2024-06-01T11:00:00"}
    failure = {"modality": "lidar", "footprint": "gap.gpkg", "start": "2024-06-01", "end": "2024-06-02"}
    scene = make_scene(tmp_path, ["hs", "lidar"], {"failures": [failure]}, acquired)

    available = scene_availability({"hs": cube("hs"), "lidar": cube("lidar")}, scene)

    x, _ = pixel_centres()
    np.testing.assert_array_equal(available.sel(modality="lidar").values, ~((x > X0 + 20.2) & (x < X0 + 35.8)))
    assert available.sel(modality="hs").values.all()

    later = scene.modality("lidar").model_copy(update={"acquired": dt.datetime(2024, 6, 3)})
    assert not failure_mask(scene.availability.failures[0], later, cube("lidar")).values.any()


def test_whole_modality_failure_and_three_modality_patterns(tmp_path: Path) -> None:
    write_geojson_4326(tmp_path / "clouds.geojson", [CLOUD_UTM])
    availability = {"clouds": [{"path": "clouds.geojson"}], "failures": [{"modality": "sar", "reason": "no data"}]}
    scene = make_scene(tmp_path, ["hs", "lidar", "sar"], availability)
    available = scene_availability({n: cube(n) for n in ("hs", "lidar", "sar")}, scene)

    codes = pattern_codes(available)
    assert codes.dtype == np.uint8 and codes.dims == ("y", "x")
    cloudy = expected_cover(CLOUD_UTM)
    np.testing.assert_array_equal(codes.values, np.where(cloudy, 0b010, 0b011))
    counts = pattern_counts(codes, ["hs", "lidar", "sar"])
    assert counts["lidar"] == cloudy.sum()
    assert counts["hs+lidar"] == HEIGHT * WIDTH - cloudy.sum()
    assert len(counts) == 8 and sum(counts.values()) == HEIGHT * WIDTH
    assert counts["hs+lidar+sar"] == 0 and counts["none"] == 0


def test_window_failure_without_acquisition_time_names_the_catalog_key(tmp_path: Path) -> None:
    failure = {"modality": "lidar", "start": "2024-05-30", "end": "2024-06-02"}
    scene = make_scene(tmp_path, ["hs", "lidar"], {"failures": [failure]})
    with pytest.raises(InputError, match=r"catalog\.yaml.*scenes\['demo'\]\.modalities\['lidar'\]\.acquired"):
        scene_availability({"hs": cube("hs"), "lidar": cube("lidar")}, scene, tmp_path / "catalog.yaml")


# --------------------------------------------------------------------------- patterns, lazily and in a store


def test_pattern_codes_stay_lazy_on_dask_and_match_eager(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    hs, lidar = cube("hs"), cube("lidar")
    hs.values[0][rng.random((HEIGHT, WIDTH)) < 0.3] = np.nan
    lidar.values[1][rng.random((HEIGHT, WIDTH)) < 0.4] = np.nan
    scene = make_scene(tmp_path, ["hs", "lidar"])

    eager = scene_availability({"hs": hs, "lidar": lidar}, scene)
    lazy = scene_availability({"hs": hs.chunk({"y": 16, "x": 16}), "lidar": lidar.chunk({"y": 16, "x": 16})}, scene)
    codes = pattern_codes(lazy)

    assert codes.chunks is not None  # still a dask graph
    expected = (~np.isnan(hs.values[0])).astype(np.uint8) + 2 * (~np.isnan(lidar.values[1])).astype(np.uint8)
    np.testing.assert_array_equal(codes.values, expected)
    np.testing.assert_array_equal(pattern_codes(eager).values, expected)
    counts = pattern_counts(codes, ["hs", "lidar"])
    names = ["none", "hs", "lidar", "hs+lidar"]
    assert counts == {name: int((expected == code).sum()) for code, name in enumerate(names)}


def test_availability_round_trips_through_a_zarr_store(tmp_path: Path) -> None:
    scene = make_scene(tmp_path, ["hs", "lidar"])
    hs = cube("hs")
    hs[:, :5, :] = np.nan
    available = scene_availability({"hs": hs, "lidar": cube("lidar")}, scene)

    store = tmp_path / "scene.zarr"
    # as ingest stores it: modality names as variable-length strings (fixed-width ones have no Zarr v3 spec)
    stored = available.assign_coords(modality=available["modality"].values.astype(object))
    xr.Dataset({"available": stored}).to_zarr(store, mode="w", consolidated=False)
    back = xr.open_zarr(store, consolidated=False)["available"].load()

    assert back.dtype == bool and list(back["modality"].values) == ["hs", "lidar"]
    np.testing.assert_array_equal(back.values, available.values)
