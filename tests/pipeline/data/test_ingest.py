"""Ingest on small scenes written here: the round trip into the scene Zarr store, idempotence,
every bad input (one clear error, no store left behind), and the Trento-layout acceptance case."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import rioxarray  # noqa: F401
import scipy.io
import xarray as xr
import yaml
import zarr
from affine import Affine

from pipeline.config.catalog import load_catalog
from pipeline.config.errors import AlignmentError, CatalogError, SourceError
from pipeline.data.ingest import ingest_catalog, ingest_scene
from pipeline.data.store import scene_store_path
from pipeline.ingest import main

SHARED = Path(__file__).resolve().parents[3] / ".." / "shared" / "data"
CRS = "EPSG:32632"
X0, Y0 = 664_000.0, 5_104_000.0
H, W = 40, 60  # pixels of 1 m
HS_BANDS = 5
WAVELENGTHS = [450.0, 550.0, 650.0, 750.0, 850.0]
CLASSES = [
    {"value": 1, "name": "Apple trees", "color": "#d62728"},
    {"value": 2, "name": "Buildings", "color": "#7f7f7f"},
    {"value": 3, "name": "Ground", "color": "#c49c6b"},
]


def write_tif(path: Path, data: np.ndarray, transform: Affine, nodata: float | None = None, crs: str = CRS) -> Path:
    with rasterio.open(path, "w", driver="GTiff", height=data.shape[1], width=data.shape[2], count=data.shape[0],
                       dtype=data.dtype, crs=crs, transform=transform, nodata=nodata) as dst:
        dst.write(data)
    return path


class SmallScene:
    """A 40 x 60 m scene: HS at 1 m (the grid), LiDAR at 2 m (a ramp in x), labels at 2 m."""

    def __init__(self, root: Path) -> None:
        self.root = root
        data = root / "data"
        data.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        self.hs = rng.random((HS_BANDS, H, W)).astype("float32")
        self.hs[:, 3, 7] = -1.0  # one nodata pixel
        write_tif(data / "hs.tif", self.hs, Affine(1.0, 0, X0, 0, -1.0, Y0))
        xc = X0 + 1.0 + 2.0 * np.arange(W // 2)  # LiDAR pixel centres at 2 m
        ramp = np.broadcast_to(0.1 * (xc - X0), (H // 2, W // 2))
        self.lidar = np.stack([ramp, ramp + 100.0]).astype("float32")
        write_tif(data / "lidar.tif", self.lidar, Affine(2.0, 0, X0, 0, -2.0, Y0))
        self.labels = rng.integers(0, 4, size=(1, H // 2, W // 2)).astype("uint8")
        write_tif(data / "labels.tif", self.labels, Affine(2.0, 0, X0, 0, -2.0, Y0))
        self.catalog: dict[str, Any] = {
            "name": "small",
            "scenes": [{
                "name": "small",
                "modalities": [
                    {"name": "hs", "kind": "hs", "source": {"path": "data/hs.tif"}, "wavelengths": WAVELENGTHS,
                     "nodata": -1.0},
                    {"name": "lidar", "kind": "lidar", "source": {"path": "data/lidar.tif"}},
                ],
                "grid": {"from_modality": "hs"},
                "labels": {"source": {"path": "data/labels.tif"}, "classes": CLASSES},
            }],
            "output": {"folder": "out", "tile_size": 16},
        }

    def write_catalog(self, catalog: dict[str, Any] | None = None) -> Path:
        path = self.root / "catalog.yaml"
        path.write_text(yaml.safe_dump(catalog or self.catalog, sort_keys=False))
        return path

    def edited(self) -> dict[str, Any]:
        return copy.deepcopy(self.catalog)

    @property
    def store(self) -> Path:
        return scene_store_path(self.root / "out", "small")


@pytest.fixture
def scene(tmp_path: Path) -> SmallScene:
    return SmallScene(tmp_path)


def ingest(path: Path, **kwargs: Any) -> Path:
    catalog = load_catalog(path)
    return ingest_scene(catalog, catalog.scenes[0], **kwargs)


def leftovers(root: Path) -> list[Path]:
    out = root / "out"
    return [p for p in out.rglob("*") if ".tmp-" in p.name or ".old-" in p.name] if out.exists() else []


# ----------------------------------------------------------------------------- round trip


def test_round_trip(scene: SmallScene) -> None:
    path = ingest(scene.write_catalog())
    assert path == scene.store
    ds = xr.open_zarr(path)
    # Lazy, chunked by tile, every band of a modality in one chunk.
    assert ds["hs"].chunks is not None and ds["hs"].encoding["chunks"] == (HS_BANDS, 16, 16)
    assert ds["labels"].encoding["chunks"] == (16, 16)
    assert set(ds.data_vars) == {"hs", "lidar", "labels", "available"}
    assert ds["hs"].dims == ("band_hs", "y", "x") and ds["hs"].dtype == np.float32
    assert ds["lidar"].dims == ("band_lidar", "y", "x")
    assert ds["labels"].dtype == np.uint8 and ds["available"].dims == ("modality", "y", "x")
    assert list(ds["modality"].values) == ["hs", "lidar"]
    # Georeference: attributes and rioxarray's spatial_ref.
    assert ds.attrs["crs"] == CRS and ds.rio.crs.to_epsg() == 32632
    assert ds.attrs["transform"] == [1.0, 0.0, X0, 0.0, -1.0, Y0]
    assert ds.rio.transform() == Affine(1.0, 0.0, X0, 0.0, -1.0, Y0)
    np.testing.assert_allclose(ds["x"].values, X0 + 0.5 + np.arange(W))
    # Values: HS on the grid is stored as is, nodata as NaN.
    hs = ds["hs"].values
    assert np.isnan(hs[:, 3, 7]).all()
    expected = scene.hs.copy()
    expected[:, 3, 7] = np.nan
    np.testing.assert_array_equal(hs, expected)
    np.testing.assert_array_equal(ds["wavelength_hs"].values, WAVELENGTHS)
    assert np.isnan(ds["wavelength_lidar"].values).all()
    # LiDAR, 2 m -> 1 m bilinear: a ramp in x stays the same ramp inside the scene.
    lidar = ds["lidar"].values
    np.testing.assert_allclose(lidar[0, :, 1:-1], np.broadcast_to(0.1 * (ds["x"].values[1:-1] - X0), (H, W - 2)), atol=1e-4)
    np.testing.assert_allclose(lidar[1] - lidar[0], 100.0, atol=1e-3)
    # Labels, 2 m -> 1 m nearest: each label covers 2 x 2 pixels, values unchanged.
    np.testing.assert_array_equal(ds["labels"].values, np.kron(scene.labels[0], np.ones((2, 2), np.uint8)))
    # Availability: HS missing at its nodata pixel only.
    available = ds["available"]
    assert not bool(available.sel(modality="hs").values[3, 7])
    assert int((~available.sel(modality="hs")).sum()) == 1
    assert bool(available.sel(modality="lidar").all())
    # Class table and modalities in the attributes.
    assert [c["name"] for c in ds.attrs["classes"]] == ["Apple trees", "Buildings", "Ground"]
    assert [(m["name"], m["bands"]) for m in ds.attrs["modalities"]] == [("hs", 5), ("lidar", 2)]
    assert ds.attrs["tile_size"] == 16 and len(ds.attrs["content_hash"]) == 64
    assert leftovers(scene.root) == []


def test_declared_grid_resamples_every_modality(scene: SmallScene) -> None:
    catalog = scene.edited()
    catalog["scenes"][0]["grid"] = {"crs": CRS, "resolution": 2.0, "bounds": [X0 + 10, Y0 - 30, X0 + 50, Y0 - 10]}
    ds = xr.open_zarr(ingest(scene.write_catalog(catalog)))
    assert ds.sizes["y"] == 10 and ds.sizes["x"] == 20
    assert ds.attrs["transform"] == [2.0, 0.0, X0 + 10, 0.0, -2.0, Y0 - 10]
    # The LiDAR grid is aligned with the declared one: its values pass through unchanged.
    np.testing.assert_allclose(ds["lidar"].values, scene.lidar[:, 5:15, 5:25])


def test_fixed_splits_and_vector_labels(scene: SmallScene) -> None:
    import geopandas as gpd
    from shapely.geometry import box

    data = scene.root / "data"
    train = np.zeros((1, H, W), np.uint8)
    train[0, 5:10, 5:10] = 1
    test = np.zeros((1, H, W), np.uint8)
    test[0, 20:25, 30:40] = 2
    scipy.io.savemat(data / "TrLabel.mat", {"TrLabel": train[0]})
    scipy.io.savemat(data / "TeLabel.mat", {"TeLabel": test[0]})
    frame = gpd.GeoDataFrame({"class": ["Ground", "Buildings"]},
                             geometry=[box(X0, Y0 - 10, X0 + 10, Y0), box(X0 + 40, Y0 - 40, X0 + 60, Y0 - 30)], crs=CRS)
    frame.to_crs("EPSG:4326").to_file(data / "truth.geojson", driver="GeoJSON")
    catalog = scene.edited()
    catalog["scenes"][0]["labels"] = {
        "vector": "data/truth.geojson",
        "train": {"path": "data/TrLabel.mat", "format": "mat"},
        "test": {"path": "data/TeLabel.mat", "format": "mat"},
        "classes": CLASSES,
    }
    ds = xr.open_zarr(ingest(scene.write_catalog(catalog)))
    np.testing.assert_array_equal(ds["train_labels"].values, train[0])
    np.testing.assert_array_equal(ds["test_labels"].values, test[0])
    labels = ds["labels"].values
    # Reprojected to lon/lat and back: pixel centres 1 m inside the boxes are certainly in.
    assert (labels[1:9, 1:9] == 3).all() and (labels[31:39, 41:59] == 2).all()
    assert (labels[15:25, 15:35] == 0).all()


# ----------------------------------------------------------------------------- idempotence


def test_unchanged_inputs_are_not_rewritten(scene: SmallScene, caplog: pytest.LogCaptureFixture) -> None:
    catalog_file = scene.write_catalog()
    path = ingest(catalog_file)
    marker = path / "zarr.json"
    first = marker.stat().st_mtime_ns
    first_hash = zarr.open_group(path, mode="r").attrs["content_hash"]
    with caplog.at_level("INFO", logger="pipeline.data.ingest"):
        assert ingest(catalog_file) == path
    assert "unchanged" in caplog.text
    assert marker.stat().st_mtime_ns == first
    # A changed input file changes the hash and rewrites the store.
    changed = scene.hs.copy()
    changed[0, 0, 0] = 0.123
    write_tif(scene.root / "data" / "hs.tif", changed, Affine(1.0, 0, X0, 0, -1.0, Y0))
    ingest(catalog_file)
    assert zarr.open_group(path, mode="r").attrs["content_hash"] != first_hash
    assert float(xr.open_zarr(path)["hs"].values[0, 0, 0]) == pytest.approx(0.123)
    # So does a changed catalog (tile size), and --force always rewrites.
    catalog = scene.edited()
    catalog["output"]["tile_size"] = 32
    ingest(scene.write_catalog(catalog))
    assert xr.open_zarr(path)["hs"].encoding["chunks"] == (HS_BANDS, 32, 32)
    before = marker.stat().st_mtime_ns
    ingest(scene.write_catalog(catalog), force=True)
    assert marker.stat().st_mtime_ns != before
    assert leftovers(scene.root) == []


def test_a_failed_reingest_keeps_the_old_store(scene: SmallScene) -> None:
    path = ingest(scene.write_catalog())
    (scene.root / "data" / "lidar.tif").unlink()
    with pytest.raises(SourceError):
        ingest(scene.write_catalog())
    assert xr.open_zarr(path)["hs"].shape == (HS_BANDS, H, W)
    assert leftovers(scene.root) == []


# ----------------------------------------------------------------------------- bad input


def _bad(scene: SmallScene, edit) -> dict[str, Any]:
    catalog = scene.edited()
    edit(catalog["scenes"][0], scene.root / "data")
    return catalog


def _missing_file(s: dict, data: Path) -> None:
    s["modalities"][1]["source"]["path"] = "data/no_lidar.tif"


def _mat_without_key(s: dict, data: Path) -> None:
    scipy.io.savemat(data / "lidar.mat", {"data": np.zeros((H, W, 2), np.float32)})
    s["modalities"][1] = {"name": "lidar", "kind": "lidar", "source": {"path": "data/lidar.mat", "format": "mat", "key": "Lidar_Trento"},
                          "georeference": {"crs": CRS, "origin": [X0, Y0], "resolution": 1.0}}


def _wavelength_count(s: dict, data: Path) -> None:
    s["modalities"][0]["wavelengths"] = WAVELENGTHS[:3]


def _no_crs(s: dict, data: Path) -> None:
    scipy.io.savemat(data / "lidar.mat", {"data": np.zeros((H, W, 2), np.float32)})
    s["modalities"][1] = {"name": "lidar", "kind": "lidar", "source": {"path": "data/lidar.mat", "format": "mat"}}


def _no_overlap(s: dict, data: Path) -> None:
    write_tif(data / "far.tif", np.ones((1, 10, 10), np.float32), Affine(1.0, 0, X0 + 5000, 0, -1.0, Y0))
    s["modalities"][1]["source"]["path"] = "data/far.tif"


def _truncated(s: dict, data: Path) -> None:
    path = data / "cut.tif"
    with rasterio.open(path, "w", driver="GTiff", height=H, width=W, count=2, dtype="float32", crs=CRS,
                       transform=Affine(1.0, 0, X0, 0, -1.0, Y0), tiled=True, blockxsize=16, blockysize=16) as dst:
        dst.write(np.random.default_rng(0).random((2, H, W)).astype("float32"))
    path.write_bytes(path.read_bytes()[: int(path.stat().st_size * 0.6)])
    s["modalities"][1]["source"]["path"] = "data/cut.tif"


def _labels_out_of_table(s: dict, data: Path) -> None:
    write_tif(data / "bad_labels.tif", np.full((1, H, W), 9, np.uint8), Affine(1.0, 0, X0, 0, -1.0, Y0))
    s["labels"]["source"]["path"] = "data/bad_labels.tif"


BAD_INPUTS = {
    "missing file": (_missing_file, SourceError, ["no_lidar.tif", "modalities['lidar'].source.path", "existing"]),
    "mat without the key": (_mat_without_key, SourceError, ["lidar.mat", "source.key", "'Lidar_Trento'", "['data']"]),
    "wavelength count": (_wavelength_count, SourceError, ["hs.tif", "modalities['hs'].wavelengths", "5 values", "3 values"]),
    "no crs, no georeference": (_no_crs, AlignmentError, ["lidar.mat", "modalities['lidar'].georeference", "CRS"]),
    "no overlap": (_no_overlap, AlignmentError, ["far.tif", "modalities['lidar']", "overlapping"]),
    "truncated geotiff": (_truncated, SourceError, ["cut.tif", "modalities['lidar'].source.path", "readable GeoTIFF"]),
    "label outside the class table": (_labels_out_of_table, SourceError, ["bad_labels.tif", "labels.source", "[9]"]),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_gives_one_clear_error_and_no_store(scene: SmallScene, case: str) -> None:
    edit, error, fragments = BAD_INPUTS[case]
    with pytest.raises(error) as err:
        ingest(scene.write_catalog(_bad(scene, edit)))
    message = str(err.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert not scene.store.exists()
    assert leftovers(scene.root) == []


def test_misspelt_catalog_key(scene: SmallScene) -> None:
    catalog = scene.edited()
    catalog["scenes"][0]["modalities"][1]["nodat"] = -9999
    with pytest.raises(CatalogError) as err:
        ingest(scene.write_catalog(catalog))
    assert "catalog.yaml" in str(err.value) and "scenes['small'].modalities['lidar'].nodat" in str(err.value)
    assert not scene.store.exists()


# ----------------------------------------------------------------------------- command line


def test_command_line(scene: SmallScene, capsys: pytest.CaptureFixture[str]) -> None:
    catalog_file = scene.write_catalog()
    assert main([str(catalog_file), "--scene", "small"]) == 0
    assert str(scene.store) in capsys.readouterr().out
    assert main([str(catalog_file), "--scene", "elsewhere"]) == 1
    assert "error:" in capsys.readouterr().err
    bad = scene.edited()
    bad["scenes"][0]["modalities"][0]["source"]["path"] = "data/gone.tif"
    assert main([str(scene.write_catalog(bad)), "--force"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "gone.tif" in err and "Traceback" not in err


def test_ingest_catalog_writes_every_scene(scene: SmallScene) -> None:
    catalog = scene.edited()
    second = copy.deepcopy(catalog["scenes"][0])
    second["name"] = "second"
    catalog["scenes"].append(second)
    paths = ingest_catalog(load_catalog(scene.write_catalog(catalog)))
    assert [p.parent.name for p in paths] == ["small", "second"] and all(p.is_dir() for p in paths)


# ----------------------------------------------------------------------------- Trento layout


def test_trento_layout_ingests_with_declared_georeference(tmp_path: Path) -> None:
    lidar_file = SHARED / "trento" / "Italy_lidar.mat"
    gt_file = SHARED / "trento" / "allgrd.mat"
    if not (lidar_file.is_file() and gt_file.is_file()):
        pytest.skip("the shared Trento pieces are absent")
    hsi = np.random.default_rng(0).random((166, 600, 63)).astype("float32")  # no real HS cube exists here
    scipy.io.savemat(tmp_path / "Italy_hsi.mat", {"data": hsi})
    catalog = yaml.safe_load((Path(__file__).resolve().parents[3] / "catalogs" / "trento.yaml").read_text())
    scene = catalog["scenes"][0]
    scene["modalities"][0]["source"]["path"] = str(tmp_path / "Italy_hsi.mat")
    scene["modalities"][1]["source"]["path"] = str(lidar_file.resolve())
    scene["labels"]["source"]["path"] = str(gt_file.resolve())
    catalog["output"]["folder"] = str(tmp_path / "out")
    catalog_file = tmp_path / "trento.yaml"
    catalog_file.write_text(yaml.safe_dump(catalog, sort_keys=False))
    ds = xr.open_zarr(ingest(catalog_file))
    assert ds.attrs["crs"] == "EPSG:32632" and ds.rio.crs.to_epsg() == 32632
    geo = scene["modalities"][0]["georeference"]
    assert ds.attrs["transform"] == [1.0, 0.0, geo["origin"][0], 0.0, -1.0, geo["origin"][1]]
    assert ds["hs"].shape == (63, 166, 600) and ds["lidar"].shape == (2, 166, 600)
    np.testing.assert_array_equal(ds["hs"].values, np.moveaxis(hsi, -1, 0))
    np.testing.assert_array_equal(ds["lidar"].values, np.moveaxis(scipy.io.loadmat(lidar_file)["data"], -1, 0))
    assert int((ds["labels"].values > 0).sum()) == 30_214
    assert ds["wavelength_hs"].values[0] == 402 and ds["wavelength_hs"].values[-1] == 989
    assert bool(ds["available"].all())
