"""``pipeline.run``'s held-out accuracy, per availability pattern and per footprint of the catalog's clouds and failures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from pipeline.config.catalog import Catalog
from pipeline.data.availability import pattern_codes
from pipeline.data.ingest import ingest_scene
from pipeline.learn.breakdown import footprint_masks
from pipeline.outputs.report import accuracy_lines
from pipeline.run import held_out_accuracy


def test_held_out_accuracy_by_pattern_and_footprint(demo_catalog: Catalog, tmp_path: Path) -> None:
    scene = demo_catalog.scene()
    ds = xr.open_zarr(ingest_scene(demo_catalog, scene))
    labels = ds["labels"].values
    # A map that is right everywhere except under the clouds, where it says class 1.
    clouds = footprint_masks(scene, ds["labels"], demo_catalog.path)["under clouds"]
    predicted = np.where(clouds & (labels > 0), 1, labels).astype(np.uint8)
    codes = pattern_codes(ds["available"]).values
    xr.Dataset({"class": (("y", "x"), predicted), "pattern": (("y", "x"), codes)}).to_zarr(tmp_path / "map.zarr")
    classes = [c.model_dump(mode="json") for c in scene.labels.classes]
    accuracy = held_out_accuracy(ds, tmp_path / "map.zarr", tmp_path, {"classes": classes}, scene=scene, catalog_file=demo_catalog.path)
    assert accuracy is not None
    footprints = accuracy["footprints"]
    assert footprints["clear"]["oa"] == 1.0
    assert footprints["lidar failure (flight strip never flown)"]["n"] > 0
    under = (clouds & (labels > 0)).sum()
    assert footprints["under clouds"]["n"] == under and footprints["under clouds"]["oa"] < 1.0
    patterns = accuracy["patterns"]
    assert sum(p["n"] for p in patterns.values()) == accuracy["n"]
    assert {"clear", "hs only", "lidar only"} <= set(patterns)
    summary = "\n".join(accuracy_lines(accuracy))
    assert "by footprint:    under clouds" in summary and "by availability: hs only" in summary
