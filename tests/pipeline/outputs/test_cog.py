"""pipeline.outputs.cog: COGs, QGIS styles and the quicklook, read back with rasterio and matplotlib."""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import rasterio
import xarray as xr
from matplotlib.image import imread

from pipeline.config.errors import InputError
from pipeline.outputs import cog as export


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, make_map_store) -> object:
    return make_map_store(tmp_path_factory.mktemp("store"))


@pytest.fixture(scope="module")
def written(store, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("out")
    map_ds = store.open()
    export.write_class_cog(map_ds, folder / "class.tif")
    export.write_confidence_cog(map_ds, folder / "confidence.tif")
    export.write_pattern_cog(map_ds, folder / "pattern.tif")
    export.write_quicklook(map_ds, folder / "quicklook.png")
    return folder


def _hex(color: str) -> tuple[int, int, int, int]:
    return int(color[1:3], 16), int(color[3:5], 16), int(color[5:7], 16), 255


def _assert_cog_on_grid(src: rasterio.DatasetReader, store) -> None:
    assert src.driver == "GTiff"
    assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
    assert src.tags(ns="IMAGE_STRUCTURE")["COMPRESSION"] == "DEFLATE"
    assert src.block_shapes == [(256, 256)]
    assert src.overviews(1), "a COG of 300 x 500 px must have at least one overview"
    assert src.crs == rasterio.crs.CRS.from_epsg(32632)
    assert src.transform == store.transform
    assert (src.height, src.width) == store.classes.shape


def test_palette_cogs_are_written_without_gdal_complaints(store, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The colour table goes in before any pixel: GDAL refuses to change the photometric tag afterwards."""
    with caplog.at_level(logging.DEBUG, logger="rasterio"):
        export.write_class_cog(store.open(), tmp_path / "class.tif")
        export.write_pattern_cog(store.open(), tmp_path / "pattern.tif")
    assert "signalled an error" not in caplog.text
    with rasterio.open(tmp_path / "class.tif") as src:
        assert src.colorinterp[0] == rasterio.enums.ColorInterp.palette


def test_only_final_files_are_left(written: Path) -> None:
    assert sorted(p.name for p in written.iterdir()) == [
        "class.qml", "class.tif", "confidence.tif", "pattern.qml", "pattern.tif", "quicklook.png"]


def test_class_cog(written: Path, store) -> None:
    with rasterio.open(written / "class.tif") as src:
        _assert_cog_on_grid(src, store)
        assert src.dtypes == ("uint8",) and src.nodata == 0
        np.testing.assert_array_equal(src.read(1), store.classes)
        colormap = src.colormap(1)
        for entry in store.class_table:
            assert colormap[entry["value"]] == _hex(entry["color"])
        assert colormap[0][3] == 0  # nodata transparent
        tags = src.tags(1)
        assert {f"class_{c['value']}": c["name"] for c in store.class_table}.items() <= tags.items()
        assert src.descriptions == ("class",)
    # MODE overviews: each 2 x 2 cell of the lower-right corner is three 5s and one 2.
    with rasterio.open(written / "class.tif", overview_level=0) as overview:
        assert overview.shape == (150, 250)
        assert (overview.read(1)[-32:, -32:] == 5).all()


def test_confidence_cog(written: Path, store) -> None:
    with rasterio.open(written / "confidence.tif") as src:
        _assert_cog_on_grid(src, store)
        assert src.dtypes == ("float32",) and np.isnan(src.nodata)
        np.testing.assert_array_equal(src.read(1), store.confidence)  # NaN positions included


def test_pattern_cog(written: Path, store) -> None:
    with rasterio.open(written / "pattern.tif") as src:
        _assert_cog_on_grid(src, store)
        assert src.nodata == 0
        np.testing.assert_array_equal(src.read(1), store.pattern)
        assert {"pattern_1": "hs", "pattern_2": "lidar", "pattern_3": "hs+lidar"}.items() <= src.tags(1).items()
        colormap = src.colormap(1)
        assert len({colormap[code] for code in (1, 2, 3)}) == 3


def test_qgis_styles(written: Path, store) -> None:
    palette = ET.parse(written / "class.qml").getroot().find("pipe/rasterrenderer/colorPalette")
    entries = {int(e.get("value")): (e.get("color"), e.get("label")) for e in palette}
    assert entries == {c["value"]: (c["color"], c["name"]) for c in store.class_table}
    pattern_palette = ET.parse(written / "pattern.qml").getroot().find("pipe/rasterrenderer/colorPalette")
    assert [e.get("label") for e in pattern_palette] == ["hs", "lidar", "hs+lidar"]


def test_quicklook(written: Path, store) -> None:
    image = imread(written / "quicklook.png")
    height, width = image.shape[:2]
    assert 400 <= height <= 3000 and 400 <= width <= 3000
    rgb = (image[..., :3] * 255).round().astype(np.uint32)
    packed = np.unique((rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2])
    colours = {(int(v) >> 16, (int(v) >> 8) & 255, int(v) & 255) for v in packed}
    assert len(colours) > 10
    for entry in store.class_table:  # every class colour is drawn (map and legend)
        assert _hex(entry["color"])[:3] in colours, entry["name"]


def test_windows_stitch_exactly(store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Windows of one block (256 px): partial windows at the right and bottom edges land in place."""
    monkeypatch.setattr(export, "WINDOW_BLOCKS", 1)
    assert len(list(export._windows(*store.classes.shape))) == 4
    target = export.write_pattern_cog(store.open(), tmp_path / "pattern.tif")
    with rasterio.open(target) as src:
        np.testing.assert_array_equal(src.read(1), store.pattern)


def test_decimated_view_strides(store) -> None:
    view, step = export.decimated_view(store.open(), max_side=100)
    assert step == 5 and view.sizes == {"y": 60, "x": 100}
    np.testing.assert_array_equal(view["class"].to_numpy(), store.classes[::5, ::5])


def test_quicklook_of_a_decimated_map(store, tmp_path: Path) -> None:
    target = export.write_quicklook(store.open(), tmp_path / "q.png", title="small", max_side=100)
    assert imread(target).shape[0] > 100


def _failing_on_second_block(map_ds: xr.Dataset) -> xr.Dataset:
    def fail(block: np.ndarray, block_info: dict | None = None) -> np.ndarray:
        if block_info is not None and block_info[0]["chunk-location"] == (1, 1):
            raise RuntimeError("disk read failed")
        return block

    broken = map_ds["class"].data.rechunk(256).map_blocks(fail, dtype=np.uint8)
    return map_ds.assign({"class": (("y", "x"), broken)})


def test_failure_midway_leaves_nothing(store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(export, "WINDOW_BLOCKS", 1)  # four windows: the failure comes after a write
    broken = _failing_on_second_block(store.open())
    assert isinstance(broken["class"].data, da.Array)
    with pytest.raises(RuntimeError, match="disk read failed"):
        export.write_class_cog(broken, tmp_path / "class.tif")
    assert list(tmp_path.iterdir()) == []


def test_failure_keeps_the_previous_file(store, tmp_path: Path) -> None:
    map_ds = store.open()
    target = export.write_class_cog(map_ds, tmp_path / "class.tif")
    before = target.read_bytes()
    with pytest.raises(RuntimeError):
        export.write_class_cog(_failing_on_second_block(map_ds), target)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["class.qml", "class.tif"]


def test_unwritable_target(store, tmp_path: Path) -> None:
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    with pytest.raises(OSError):
        export.write_class_cog(store.open(), not_a_folder / "class.tif")
    assert [p.name for p in tmp_path.iterdir()] == ["file"]


def test_bad_datasets_are_named(store, tmp_path: Path) -> None:
    map_ds = store.open()
    with pytest.raises(InputError, match="class.*dtype uint8.*float32"):
        export.write_class_cog(map_ds.assign({"class": map_ds["class"].astype("float32")}), tmp_path / "c.tif")
    with pytest.raises(InputError, match="confidence"):
        export.write_confidence_cog(map_ds.drop_vars("confidence"), tmp_path / "f.tif")
    with pytest.raises(InputError, match="attrs.classes"):
        export.write_class_cog(map_ds.assign_attrs(classes=[{"value": 1}]), tmp_path / "c.tif")
    with pytest.raises(InputError, match="attrs.crs.*EPSG:99999"):
        export.write_confidence_cog(map_ds.assign_attrs(crs="EPSG:99999"), tmp_path / "f.tif")
    with pytest.raises(InputError, match="attrs.modalities"):
        export.write_quicklook(map_ds.assign_attrs(modalities=[]), tmp_path / "q.png")
    with pytest.raises(InputError, match="map.zarr"):  # names the store it came from
        export.write_pattern_cog(map_ds.drop_vars("pattern"), tmp_path / "p.tif")
    assert list(tmp_path.iterdir()) == []
