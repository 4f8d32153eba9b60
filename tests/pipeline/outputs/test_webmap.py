"""pipeline.webmap on real COGs exported from a map store: overlays, hover regions, point lookup, HTML."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from pyproj import Transformer
from rasterio.features import geometry_mask

from pipeline.config.errors import InputError
from pipeline.outputs.cog import (
    write_class_cog,
    write_confidence_cog,
    write_pattern_cog,
)
from pipeline.outputs.webmap import (
    class_regions,
    continuous_overlay,
    interactive_map,
    paletted_overlay,
    pixel_info,
    side_by_side,
)


@pytest.fixture(scope="module")
def exported(make_map_store, tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("webmap")
    store = make_map_store(folder, height=100, width=150)
    ds = store.open()
    write_class_cog(ds, folder / "landcover.tif")
    write_confidence_cog(ds, folder / "confidence.tif")
    write_pattern_cog(ds, folder / "availability.tif")
    return folder, store


def to_lonlat(store, row: float, col: float) -> tuple[float, float]:
    x, y = store.transform * (col, row)
    lon, lat = Transformer.from_crs("EPSG:32632", "EPSG:4326", always_xy=True).transform(x, y)
    return lon, lat


def test_pixel_info_reads_class_confidence_and_pattern(exported) -> None:
    folder, store = exported
    for row, col in [(60, 120), (99, 0), (30, 100)]:
        lon, lat = to_lonlat(store, row + 0.5, col + 0.5)
        info = pixel_info(folder, lat, lon)
        assert info["inside"] is True
        assert info["class"] == store.classes[row, col]
        assert info["confidence"] == pytest.approx(float(store.confidence[row, col]))
        assert info["pattern"] == store.pattern[row, col]
        names = {c["value"]: c["name"] for c in store.class_table}
        assert info["class_name"] == names[int(store.classes[row, col])]
    assert pixel_info(folder, 0.0, 0.0)["inside"] is False


def test_overlays_use_the_colour_table_and_hide_nodata(exported) -> None:
    folder, store = exported
    overlay = paletted_overlay(folder / "landcover.tif")
    colours = {tuple(int(c["color"][i:i + 2], 16) for i in (1, 3, 5)) for c in store.class_table}
    opaque = overlay.rgba[overlay.rgba[..., 3] == 255][:, :3]
    assert opaque.size and {tuple(p) for p in np.unique(opaque, axis=0)} <= colours
    assert (overlay.rgba[..., 3] == 0).any(), "the nodata corner is transparent"
    (south, west), (north, east) = overlay.bounds
    lon, lat = to_lonlat(store, 50, 75)  # the map centre lies inside the overlay's bounds
    assert south < lat < north and west < lon < east
    conf = continuous_overlay(folder / "confidence.tif")
    assert conf.rgba.shape[2] == 4 and (conf.rgba[..., 3] == 0).any() and (conf.rgba[..., 3] == 255).any()


def test_class_regions_cover_the_mapped_pixels_with_their_mean_confidence(exported) -> None:
    folder, store = exported
    regions = class_regions(folder)
    assert regions.crs.to_epsg() == 4326
    assert regions["pixels"].sum() == int((store.classes > 0).sum())  # 150 px a side: no decimation
    names = {c["name"] for c in store.class_table}
    assert set(regions["class"]) <= names
    biggest = regions.sort_values("pixels").iloc[-1]
    with rasterio.open(folder / "landcover.tif") as src:
        inside = ~geometry_mask([regions.to_crs(src.crs).loc[biggest.name, "geometry"]], (src.height, src.width),
                                src.transform)
    assert inside.sum() == biggest["pixels"]
    assert biggest["confidence"] == pytest.approx(float(np.nanmean(store.confidence[inside])), abs=1e-3)
    coarse = class_regions(folder, max_side=50)  # decimated: fewer, coarser regions
    assert len(coarse) <= len(regions)


def test_interactive_and_side_by_side_maps(exported, tmp_path: Path) -> None:
    folder, store = exported
    interactive_map(folder).save(str(tmp_path / "map.html"))
    page = (tmp_path / "map.html").read_text()
    for c in store.class_table:
        assert c["name"] in page and c["color"] in page
    for layer in ("land cover", "confidence (0 to 1, viridis)", "availability pattern", "mean confidence"):
        assert layer in page
    side_by_side(folder, folder).save(str(tmp_path / "dual.html"))
    assert (tmp_path / "dual.html").read_text().count("L.imageOverlay") == 6


def test_a_missing_export_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="landcover.tif"):
        interactive_map(tmp_path)
