"""pipeline.outputs.report: counts and areas against numpy, the JSON report, the STAC item, the summary."""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
from pyproj import Transformer

from pipeline.config.errors import InputError
from pipeline.learn.metrics import classification_summary
from pipeline.outputs import cog as export
from pipeline.outputs import report as rp

RESOLUTION = 2.0  # metres: a pixel is 4 m2


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, make_map_store) -> object:
    return make_map_store(tmp_path_factory.mktemp("store"), resolution=RESOLUTION)


def _build(store, **overrides) -> dict:
    arguments = dict(
        scene_name="trento test", catalog_hash="c0ffee", checkpoint_hash="beef", method="mamol",
        timings={"ingest": 1.5, "map": 12.25}, accuracy=None, availability_note=["lidar: strip never flown"],
        versions={"numpy": "x"}, outputs={"class": "class.tif"},
    )
    arguments.update(overrides)
    return rp.build_report(store.open(), **arguments)


def test_counts_and_hectares_match_numpy(store) -> None:
    report = _build(store)
    area = RESOLUTION**2
    assert report["grid"]["pixel_area_m2"] == area
    for entry, expected in zip(report["classes"], store.class_table):
        pixels = int((store.classes == expected["value"]).sum())
        assert (entry["value"], entry["name"], entry["pixels"]) == (expected["value"], expected["name"], pixels)
        assert entry["hectares"] == pytest.approx(pixels * area / 1e4)
    nodata = int((store.classes == 0).sum())
    assert report["pixels"] == {"total": store.classes.size, "mapped": store.classes.size - nodata, "nodata": nodata}
    assert report["mapped_hectares"] == pytest.approx((store.classes.size - nodata) * area / 1e4)
    names = {0: "none", 1: "hs", 2: "lidar", 3: "hs+lidar"}
    assert report["patterns"] == [
        {"code": code, "name": names[code], "pixels": int((store.pattern == code).sum())}
        for code in range(4) if (store.pattern == code).any()
    ]
    assert report["hashes"] == {"catalog": "c0ffee", "checkpoint": "beef"}
    assert report["timings_s"] == {"ingest": 1.5, "map": 12.25}


def test_geographic_crs_has_no_area(tmp_path: Path, make_map_store) -> None:
    geo = make_map_store(tmp_path, height=40, width=60, resolution=1e-4, crs="EPSG:4326", origin=(11.0, 46.1))
    report = _build(geo)
    assert report["grid"]["pixel_area_m2"] is None and "geographic" in report["grid"]["area_note"]
    assert all(entry["hectares"] is None for entry in report["classes"])
    assert "n/a" in rp.format_summary(report)


def test_unknown_class_value_is_an_error(store) -> None:
    map_ds = store.open()
    with pytest.raises(InputError, match=r"class.*found values \[9\]"):
        rp.build_report(map_ds.assign({"class": map_ds["class"].where(map_ds["class"] != 3, 9)}),
                        scene_name="s", catalog_hash="", checkpoint_hash="", method="m", timings={},
                        accuracy=None, availability_note=[], outputs={})


def test_versions_are_collected() -> None:
    versions = rp.collect_versions()
    assert versions["numpy"] == metadata.version("numpy")
    assert versions["open_clip"] == metadata.version("open_clip_torch")
    assert versions["pipeline"] and versions["python"] and versions["gdal"]


def test_report_json_round_trip(store, tmp_path: Path) -> None:
    y_true = store.classes[store.classes > 0][:1000] - 1
    accuracy = classification_summary(y_true, np.roll(y_true, 1), 6, [c["name"] for c in store.class_table])
    report = _build(store, accuracy=accuracy, versions=None)
    target = rp.write_report(report, tmp_path / "report.json")
    written = json.loads(target.read_text())
    counts = np.bincount(store.classes.ravel(), minlength=7)
    assert {c["value"]: c["pixels"] for c in written["classes"]} == {v: int(counts[v]) for v in range(1, 7)}
    assert written["pixels"]["nodata"] == int(counts[0])
    assert written["accuracy"]["oa"] == pytest.approx(float((y_true == np.roll(y_true, 1)).mean()))
    assert written["versions"]["numpy"] == metadata.version("numpy")


def test_report_with_nan_is_refused_and_leaves_nothing(store, tmp_path: Path) -> None:
    report = _build(store, timings={"map": float("nan")})
    with pytest.raises(ValueError):
        rp.write_report(report, tmp_path / "report.json")
    assert list(tmp_path.iterdir()) == []


def test_stac_item(store, tmp_path: Path) -> None:
    map_ds = store.open()
    report = _build(store)
    assets = {"class": tmp_path / "class.tif", "pattern": tmp_path / "pattern.tif",
              "quicklook": tmp_path / "quicklook.png", "webmap": tmp_path / "map.html", "report": tmp_path / "report.json"}
    target = rp.write_stac_item(report, map_ds, tmp_path / "item.json", assets)
    item = json.loads(target.read_text())

    assert item["type"] == "Feature" and item["stac_version"] == "1.0.0" and item["id"] == "trento-test"
    assert rp.PROJECTION_EXTENSION in item["stac_extensions"]
    assert rp.CLASSIFICATION_EXTENSION in item["stac_extensions"]
    assert item["links"] == []
    properties = item["properties"]
    assert properties["datetime"].endswith("Z")
    assert properties["proj:epsg"] == 32632
    assert properties["proj:shape"] == list(store.classes.shape)
    assert properties["proj:transform"] == list(store.transform)[:6]

    height, width = store.classes.shape
    to_lonlat = Transformer.from_crs("EPSG:32632", "EPSG:4326", always_xy=True)
    west, south, east, north = item["bbox"]
    for col, row in [(0, 0), (width, 0), (width, height), (0, height)]:
        lon, lat = to_lonlat.transform(*(store.transform * (col, row)))
        assert west <= lon <= east and south <= lat <= north
    ring = item["geometry"]["coordinates"][0]
    assert item["geometry"]["type"] == "Polygon" and ring[0] == ring[-1]
    signed_area = sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(ring[:-1], ring[1:]))
    assert signed_area > 0  # counter-clockwise exterior ring (RFC 7946)
    assert west == min(p[0] for p in ring) and north == max(p[1] for p in ring)

    class_asset = item["assets"]["class"]
    assert class_asset["href"] == "class.tif"
    assert class_asset["type"] == "image/tiff; application=geotiff; profile=cloud-optimized"
    assert class_asset["roles"] == ["data"]
    classes = {c["value"]: c for c in class_asset["classification:classes"]}
    assert classes[0]["nodata"] is True
    for entry in store.class_table:
        assert classes[entry["value"]]["description"] == entry["name"]
        assert classes[entry["value"]]["color_hint"] == entry["color"][1:].upper()
        assert classes[entry["value"]]["name"].replace("_", " ") == entry["name"]
    pattern_classes = item["assets"]["pattern"]["classification:classes"]
    assert [c["name"] for c in pattern_classes] == ["none", "hs", "lidar", "hs_lidar"]
    assert item["assets"]["quicklook"]["type"] == "image/png"
    assert item["assets"]["quicklook"]["roles"] == ["overview"]
    assert item["assets"]["report"] == {"href": "report.json", "type": "application/json", "title": "report",
                                        "roles": ["metadata"]}
    assert item["assets"]["webmap"] == {"href": "map.html", "type": "text/html", "title": "webmap", "roles": ["visual"]}


def test_stac_datetime_from_acquisitions(store, tmp_path: Path) -> None:
    map_ds = store.open()
    modalities = [{"name": "hs", "acquired": "2020-06-01T12:00:00+02:00"},
                  {"name": "lidar", "acquired": "2019-05-02T00:00:00Z"}]
    item = rp.stac_item(_build(store), map_ds.assign_attrs(modalities=modalities), tmp_path, {})
    assert item["properties"]["datetime"] is None
    assert item["properties"]["start_datetime"] == "2019-05-02T00:00:00Z"
    assert item["properties"]["end_datetime"] == "2020-06-01T10:00:00Z"
    bad = map_ds.assign_attrs(modalities=[{"name": "hs", "acquired": "June"}])
    with pytest.raises(InputError, match="acquired"):
        rp.stac_item(_build(store), bad, tmp_path, {})


def test_stac_validation_names_the_problem() -> None:
    with pytest.raises(ValueError, match="missing 'bbox'"):
        rp.validate_stac_item({"type": "Feature", "stac_version": "1.0.0", "id": "x",
                               "geometry": {"coordinates": [[[0, 0], [1, 0], [1, 1], [0, 0]]]},
                               "properties": {"datetime": "2020-01-01T00:00:00Z"}, "links": [], "assets": {}})


def test_format_summary(store) -> None:
    y_true = store.classes[store.classes > 0][:500] - 1
    accuracy = classification_summary(y_true, y_true, 6, [c["name"] for c in store.class_table])
    text = rp.format_summary(_build(store, accuracy=accuracy))
    for entry in store.class_table:
        assert entry["name"] in text
    assert "OA 100.00%" in text and "kappa 1.0000" in text
    assert "hs+lidar" in text and "total 13.8s" in text and "class.tif" in text
    buildings = next(e for e in _build(store)["classes"] if e["name"] == "Buildings")
    assert f"{buildings['hectares']:,.2f}" in text
    assert len(text.splitlines()) < 40


def test_stac_recognises_layers_by_band_description(store, tmp_path: Path) -> None:
    """Assets named as the CLI names them (landcover, availability) still get their class tables."""
    map_ds = store.open()
    assets = {"landcover": export.write_class_cog(map_ds, tmp_path / "landcover.tif"),
              "confidence": export.write_confidence_cog(map_ds, tmp_path / "confidence.tif"),
              "availability": export.write_pattern_cog(map_ds, tmp_path / "availability.tif")}
    item = rp.stac_item(_build(store), map_ds, tmp_path, assets)
    landcover = item["assets"]["landcover"]["classification:classes"]
    assert [c["value"] for c in landcover] == [0, *(c["value"] for c in store.class_table)]
    assert [c["value"] for c in item["assets"]["availability"]["classification:classes"]] == [0, 1, 2, 3]
    assert "classification:classes" not in item["assets"]["confidence"]
    assert item["assets"]["confidence"]["roles"] == ["data"]
