"""Readers on the real file formats: the real Trento and MUUFL .mat files, and GeoTIFF, ENVI, MATLAB v7.3
and Zarr files written here and read back."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import rasterio
import rioxarray  # noqa: F401
import scipy.io
import xarray as xr
from affine import Affine

from pipeline.config.catalog import Georeference, Modality, Source
from pipeline.config.errors import SourceError
from pipeline.data.sources import READERS, read_source
from pipeline.data.sources.geotiff import READ_CHUNK

SHARED = Path(__file__).resolve().parents[3] / ".." / "shared" / "data"
CRS = "EPSG:32632"
TRANSFORM = Affine(2.0, 0.0, 652_000.0, 0.0, -2.0, 5_102_000.0)
GEO = Georeference(crs=CRS, origin=(664_000.0, 5_104_000.0), resolution=1.0)


def shared_file(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.is_file():
        pytest.skip(f"{path} is not here (the shared benchmark pieces are absent)")
    return path


def write_tif(path: Path, data: np.ndarray, *, nodata: float | None = None, wavelengths: list[float] | None = None,
              crs: str | None = CRS, transform: Affine = TRANSFORM) -> Path:
    bands, height, width = data.shape
    with rasterio.open(path, "w", driver="GTiff", height=height, width=width, count=bands, dtype=data.dtype,
                       crs=crs, transform=transform, nodata=nodata) as dst:
        dst.write(data)
        for b, wl in enumerate(wavelengths or [], start=1):
            dst.update_tags(b, wavelength=str(wl), wavelength_units="nm")
    return path


def cube(bands: int = 3, height: int = 12, width: int = 20, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((bands, height, width)).astype("float32")


# ----------------------------------------------------------------------------- real .mat files


def test_real_trento_lidar_with_declared_georeference() -> None:
    path = shared_file("trento", "Italy_lidar.mat")
    modality = Modality(name="lidar", kind="lidar", source=Source(path=path, format="mat", key="data"), georeference=GEO)
    da = read_source(modality)
    raw = scipy.io.loadmat(path)["data"]
    assert raw.shape == (166, 600, 2)
    assert da.dims == ("band", "y", "x") and da.shape == (2, 166, 600) and da.dtype == np.float32
    np.testing.assert_array_equal(da.values, np.moveaxis(raw, -1, 0))
    assert da.rio.crs.to_epsg() == 32632
    assert da.rio.transform() == Affine(1.0, 0.0, 664_000.0, 0.0, -1.0, 5_104_000.0)
    assert float(da.x[0]) == 664_000.5 and float(da.y[-1]) == 5_104_000.0 - 165.5
    assert 19.0 < float(da.sel(band=1).max()) < 21.0  # height, metres


def test_real_trento_ground_truth_keeps_its_classes() -> None:
    path = shared_file("trento", "allgrd.mat")
    da = read_source(Source(path=path, format="mat"))  # one array in the file: found without a key
    assert da.shape == (1, 166, 600) and da.dtype == np.uint8
    assert int((da.values > 0).sum()) == 30_214
    assert set(np.unique(da.values).tolist()) == {0, 1, 2, 3, 4, 5, 6}
    assert da.rio.crs is None  # .mat files carry no georeference


def test_real_muufl_lidar_and_ground_truth() -> None:
    lidar = read_source(Source(path=shared_file("muufl", "LiDAR.mat"), format="mat", key="LiDAR"))
    gt = read_source(Source(path=shared_file("muufl", "gt.mat"), format="mat", key="gt"))
    assert lidar.shape == (2, 325, 220)
    assert gt.shape == (1, 325, 220)
    assert int((gt.values > 0).sum()) == 53_687
    assert gt.values.max() == 11


def test_real_mat_with_a_wrong_key_names_file_key_and_arrays() -> None:
    path = shared_file("trento", "Italy_lidar.mat")
    with pytest.raises(SourceError) as err:
        read_source(Source(path=path, format="mat", key="Lidar_Trento"), where="modalities['lidar'].source")
    message = str(err.value)
    assert "Italy_lidar.mat" in message and "modalities['lidar'].source.key" in message
    assert "'Lidar_Trento'" in message and "['data']" in message


# ----------------------------------------------------------------------------- MATLAB files written here


def test_mat_band_orders(tmp_path: Path) -> None:
    yxb = np.random.default_rng(1).random((10, 14, 3)).astype("float32")
    scipy.io.savemat(tmp_path / "a.mat", {"cube": yxb, "other": np.zeros(3)})
    byx = read_source(Source(path=tmp_path / "a.mat", format="mat", key="cube"))
    np.testing.assert_array_equal(byx.values, np.moveaxis(yxb, -1, 0))
    scipy.io.savemat(tmp_path / "b.mat", {"cube": np.moveaxis(yxb, -1, 0)})
    auto = read_source(Source(path=tmp_path / "b.mat", format="mat"))
    np.testing.assert_array_equal(auto.values, byx.values)
    # A declared order wins over the guess: (y, x, band) of a 3 x 4 x 5 array has 5 bands.
    small = np.arange(60, dtype="float32").reshape(3, 4, 5)
    scipy.io.savemat(tmp_path / "c.mat", {"c": small})
    declared = read_source(Source(path=tmp_path / "c.mat", format="mat", band_order="yxb"))
    assert declared.shape == (5, 3, 4)


def test_mat_with_several_arrays_needs_a_key(tmp_path: Path) -> None:
    scipy.io.savemat(tmp_path / "two.mat", {"a": np.zeros((4, 4)), "b": np.ones((4, 4))})
    with pytest.raises(SourceError, match=r"two\.mat.*key.*several"):
        read_source(Source(path=tmp_path / "two.mat", format="mat"))


def write_mat73(path: Path, name: str, array: np.ndarray) -> Path:
    """A MATLAB v7.3 file: HDF5 with MATLAB's 512-byte header block, arrays stored column-major."""
    with h5py.File(path, "w", userblock_size=512) as f:
        dset = f.create_dataset(name, data=np.asarray(array).T)
        dset.attrs["MATLAB_class"] = np.bytes_("single")
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 ."
    with path.open("r+b") as f:
        f.write(header.ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02" + b"IM")
    return path


def test_mat_v73_through_h5py(tmp_path: Path) -> None:
    cube73 = np.random.default_rng(2).random((9, 11, 4)).astype("float32")  # (y, x, band) as MATLAB holds it
    path = write_mat73(tmp_path / "hsi73.mat", "HSI", cube73)
    assert h5py.is_hdf5(path)
    with pytest.raises(NotImplementedError):
        scipy.io.loadmat(path)  # scipy refuses v7.3: the reader must go through h5py
    da = read_source(Source(path=path, format="mat", key="HSI"))
    assert da.shape == (4, 9, 11)
    np.testing.assert_array_equal(da.values, np.moveaxis(cube73, -1, 0))


def test_not_a_mat_file(tmp_path: Path) -> None:
    path = tmp_path / "junk.mat"
    path.write_bytes(b"this is not a MATLAB file at all" * 10)
    with pytest.raises(SourceError, match=r"junk\.mat.*MATLAB"):
        read_source(Source(path=path, format="mat"))


# ----------------------------------------------------------------------------- GeoTIFF


def test_geotiff_round_trip(tmp_path: Path) -> None:
    data = cube(4)
    path = write_tif(tmp_path / "hs.tif", data, wavelengths=[450.0, 550.0, 650.0, 850.0])
    da = read_source(Source(path=path))
    np.testing.assert_array_equal(da.values, data)
    assert da.rio.crs.to_string() == CRS and da.rio.transform() == TRANSFORM
    np.testing.assert_array_equal(da["wavelength"].values, [450.0, 550.0, 650.0, 850.0])


def test_geotiff_one_file_per_band(tmp_path: Path) -> None:
    data = cube(3)
    paths = [write_tif(tmp_path / f"b{i}.tif", data[i : i + 1]) for i in range(3)]
    da = read_source(Source(paths=paths))
    assert da.shape == (3, 12, 20) and list(da.band.values) == [1, 2, 3]
    np.testing.assert_array_equal(da.values, data)
    assert da.rio.transform() == TRANSFORM


def test_geotiff_bands_on_different_grids(tmp_path: Path) -> None:
    a = write_tif(tmp_path / "a.tif", cube(1))
    b = write_tif(tmp_path / "b.tif", cube(1), transform=TRANSFORM * Affine.translation(3, 0))
    with pytest.raises(SourceError, match=r"b\.tif.*paths\[1\].*grid"):
        read_source(Source(paths=[a, b]), where="modalities['sar'].source")


def test_modality_nodata_becomes_nan_and_wavelengths_are_checked(tmp_path: Path) -> None:
    data = (cube(2) * 100).astype("int16")
    data[0, 0, 0] = -1
    data[1, 3, 4] = -1
    path = write_tif(tmp_path / "sar.tif", data, nodata=-1)
    da = read_source(Modality(name="sar", kind="sar", source=Source(path=path)))  # the file's nodata
    assert da.dtype == np.float32 and np.isnan(da.values[0, 0, 0]) and np.isnan(da.values[1, 3, 4])
    assert int(np.isnan(da.values).sum()) == 2
    with pytest.raises(SourceError) as err:
        read_source(Modality(name="sar", kind="sar", source=Source(path=path), wavelengths=[1.0, 2.0, 3.0]))
    assert "sar.tif" in str(err.value) and "modalities['sar'].wavelengths" in str(err.value)
    assert "2 values" in str(err.value) and "3 values" in str(err.value)


def test_truncated_geotiff(tmp_path: Path) -> None:
    path = tmp_path / "cut.tif"
    with rasterio.open(path, "w", driver="GTiff", height=256, width=256, count=2, dtype="float32", crs=CRS,
                       transform=TRANSFORM, tiled=True, blockxsize=64, blockysize=64) as dst:
        dst.write(np.random.default_rng(0).random((2, 256, 256)).astype("float32"))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(SourceError, match=r"cut\.tif.*readable GeoTIFF"):
        read_source(Source(path=path))


def test_geotiff_is_read_lazily_in_windows(tmp_path: Path) -> None:
    """Large scenes stream: the reader gives dask windows of at most READ_CHUNK pixels, nodata masked lazily."""
    data = cube(3, 600, 520)
    data[1, 300, 7] = -9999.0
    path = write_tif(tmp_path / "big.tif", data, nodata=-9999.0)
    da = read_source(Modality(name="sar", kind="sar", source=Source(path=path)))
    assert da.chunks is not None
    assert max(da.chunks[1]) <= READ_CHUNK and max(da.chunks[2]) <= READ_CHUNK and da.chunks[0] == (3,)
    values = da.values
    assert np.isnan(values[1, 300, 7]) and int(np.isnan(values).sum()) == 1
    expected = data.copy()
    expected[1, 300, 7] = np.nan
    np.testing.assert_array_equal(values, expected)


def test_corrupt_block_inside_a_geotiff_fails_when_read(tmp_path: Path) -> None:
    """A damaged block in the middle of the file (size intact) is found by the up-front read, not in a dask task."""
    path = tmp_path / "damaged.tif"
    with rasterio.open(path, "w", driver="GTiff", height=256, width=256, count=1, dtype="float32", crs=CRS,
                       transform=TRANSFORM, tiled=True, blockxsize=64, blockysize=64, compress="deflate") as dst:
        dst.write(cube(1, 256, 256))
    with rasterio.open(path) as src:
        offset = int(src.get_tag_item("BLOCK_OFFSET_2_2", "TIFF", bidx=1))
    raw = bytearray(path.read_bytes())
    raw[offset : offset + 64] = bytes(range(64))
    path.write_bytes(bytes(raw))
    with pytest.raises(SourceError, match=r"damaged\.tif.*readable GeoTIFF"):
        read_source(Source(path=path))


def test_missing_geotiff(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"nope\.tif: modalities\['hs'\]\.source\.path: expected an existing"):
        read_source(Modality(name="hs", kind="hs", source=Source(path=tmp_path / "nope.tif")))


# ----------------------------------------------------------------------------- ENVI


def write_envi(folder: Path, data: np.ndarray, wavelengths_um: list[float]) -> tuple[Path, Path]:
    raster = folder / "cube.img"
    bands, height, width = data.shape
    with rasterio.open(raster, "w", driver="ENVI", height=height, width=width, count=bands, dtype=data.dtype,
                       crs=CRS, transform=TRANSFORM) as dst:
        dst.write(data)
    header = folder / "cube.hdr"
    listed = ", ".join(f"{w:.4f}" for w in wavelengths_um)
    with header.open("a") as f:
        f.write(f"wavelength units = Micrometers\nwavelength = {{ {listed[:30]}\n {listed[30:]} }}\n")
    return raster, header


@pytest.mark.parametrize("name", ["header", "raster"])
def test_envi_round_trip_with_header_wavelengths(tmp_path: Path, name: str) -> None:
    data = cube(5)
    wavelengths = [0.45, 0.55, 0.65, 0.75, 0.85]
    raster, header = write_envi(tmp_path, data, wavelengths)
    da = read_source(Source(path=header if name == "header" else raster, format="envi"))
    np.testing.assert_array_equal(da.values, data)
    assert da.rio.crs.to_epsg() == 32632 and da.rio.transform() == TRANSFORM
    np.testing.assert_allclose(da["wavelength"].values, [450, 550, 650, 750, 850])


def test_envi_without_header(tmp_path: Path) -> None:
    raster = tmp_path / "lonely.img"
    raster.write_bytes(b"\x00" * 64)
    with pytest.raises(SourceError, match=r"lonely\.img.*ENVI header"):
        read_source(Source(path=raster, format="envi"))


# ----------------------------------------------------------------------------- Zarr


def test_zarr_round_trip(tmp_path: Path) -> None:
    data = cube(3)
    da = xr.DataArray(data, dims=("band", "y", "x"), coords={
        "band": [1, 2, 3], "y": 5_102_000.0 - 1.0 - 2.0 * np.arange(12), "x": 652_001.0 + 2.0 * np.arange(20)})
    da = da.rio.write_crs(CRS).rio.write_transform(TRANSFORM)
    xr.Dataset({"sar": da, "mask": da.isel(band=0) > 0.5}).to_zarr(tmp_path / "s.zarr", zarr_format=3, consolidated=False)
    back = read_source(Source(path=tmp_path / "s.zarr", format="zarr", key="sar"))
    assert back.chunks is not None  # lazy: a large store streams into the scene store
    np.testing.assert_array_equal(back.values, data)
    assert back.rio.crs.to_epsg() == 32632 and back.rio.transform() == TRANSFORM
    with pytest.raises(SourceError, match=r"s\.zarr.*key.*variable named 'hs'"):
        read_source(Source(path=tmp_path / "s.zarr", format="zarr", key="hs"))


def test_corrupt_zarr_chunk_is_named_when_read(tmp_path: Path) -> None:
    da = xr.DataArray(cube(2, 40, 40), dims=("band", "y", "x"))
    xr.Dataset({"sar": da}).chunk({"y": 20, "x": 20}).to_zarr(tmp_path / "s.zarr", zarr_format=3, consolidated=False)
    chunk = tmp_path / "s.zarr" / "sar" / "c" / "0" / "1" / "1"
    assert chunk.is_file()
    chunk.write_bytes(b"not a compressed chunk")
    with pytest.raises(SourceError, match=r"s\.zarr.*readable chunks of 'sar'"):
        read_source(Source(path=tmp_path / "s.zarr", format="zarr", key="sar"))


def test_every_format_has_a_reader() -> None:
    from typing import get_args

    from pipeline.config.catalog import SourceFormat

    assert set(READERS) == set(get_args(SourceFormat))
