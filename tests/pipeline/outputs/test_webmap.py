"""pipeline.outputs.webmap on real COGs exported from a map store: overlays, pixel lookup, the page's content.

What the page does in a browser is tested in test_webmap_browser.py."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import pytest
from pyproj import Transformer

from pipeline.config.errors import InputError
from pipeline.outputs.webmap import (
    ASSETS,
    BASEMAP,
    continuous_overlay,
    interactive_map,
    paletted_overlay,
    pixel_info,
    pixel_lookup,
    side_by_side,
    write_web_map,
)


@pytest.fixture(scope="module")
def exported(make_exported_run, tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("webmap")
    return folder, make_exported_run(folder, height=100, width=150)


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


def test_the_page_carries_everything_it_draws_and_needs_no_network(exported, tmp_path: Path) -> None:
    folder, store = exported
    path = write_web_map(folder)
    assert path == folder / "map.html"
    page = path.read_text()
    assert "Leaflet 1.9.4" in page and "L.imageOverlay" in page  # the vendored library, inline
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=", page), "no external script, stylesheet or image"
    urls = set(re.findall(r"https?://[^\s\"'<>)]+", page))
    # what stays online: the optional basemap and links in the attribution and Leaflet's comments
    assert {u for u in urls if "{z}" in u} == {BASEMAP["url"]}
    data = json.loads(re.search(r'<script type="application/json" id="mmlc-data">(.*?)</script>', page, re.S)[1])
    (pane,) = data["panes"]
    assert [layer["name"] for layer in pane["layers"]] == ["land cover", "confidence (0 to 1, viridis)", "availability pattern"]
    assert all(layer["image"].startswith("data:image/png;base64,") for layer in pane["layers"])
    assert pane["legend"] == [{"name": c["name"], "color": c["color"]} for c in store.class_table]
    assert (ASSETS / "leaflet" / "LICENSE").read_text().startswith("BSD 2-Clause License")


def test_pixel_lookup_holds_the_cog_values_on_its_grid(exported) -> None:
    folder, store = exported
    lookup = pixel_lookup(folder)
    assert (lookup["height"], lookup["width"], lookup["step"]) == (100, 150, 1)
    classes = np.frombuffer(base64.b64decode(lookup["classes"]), np.uint8).reshape(100, 150)
    assert np.array_equal(classes, store.classes)
    coded = np.frombuffer(base64.b64decode(lookup["confidence"]), "<u2").reshape(100, 150)
    assert np.array_equal(coded == 0, np.isnan(store.confidence)), "0 codes nodata"
    decoded = (coded.astype(float) - 1) / 65534
    np.testing.assert_allclose(decoded[coded > 0], store.confidence[coded > 0], atol=1e-5)
    mesh = lookup["mesh"]
    cols, rows = np.reshape(mesh["cols"], (mesh["n"], mesh["n"])), np.reshape(mesh["rows"], (mesh["n"], mesh["n"]))
    # the mesh spans the grid's extent in Web Mercator: its corners lie on or just outside the grid
    assert cols.min() <= 0.5 and cols.max() >= 149.5 and rows.min() <= 0.5 and rows.max() >= 99.5
    coarse = pixel_lookup(folder, max_side=50)  # a large map: per block, through the overviews
    assert coarse["width"] <= 50 and coarse["height"] <= 50 and coarse["step"] == 3
    assert len(base64.b64decode(coarse["classes"])) == coarse["width"] * coarse["height"]


def test_interactive_and_side_by_side_pages(exported, tmp_path: Path) -> None:
    folder, store = exported
    web_map = interactive_map(folder, title="run A")
    assert web_map.save(tmp_path / "map.html").read_text() == web_map.html
    assert web_map._repr_html_().startswith("<iframe srcdoc=") and "run A" in web_map.html
    dual = side_by_side(folder, folder, titles=("A", "B")).html
    data = json.loads(re.search(r'id="mmlc-data">(.*?)</script>', dual, re.S)[1])
    assert [p["title"] for p in data["panes"]] == ["A", "B"]


def test_a_missing_export_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="landcover.tif"):
        interactive_map(tmp_path)
