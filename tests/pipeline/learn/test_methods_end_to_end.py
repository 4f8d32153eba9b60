"""MMP and LVPCnet through the unchanged pipeline: the demo catalog with another ``model.method`` maps end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import xarray as xr

from models import load_checkpoint
from pipeline.config.catalog import Catalog, parse_catalog
from pipeline.run import run

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("method", ["mmp", "lvpcnet"])
def test_demo_catalog_maps_with_the_method(method: str, demo_catalog: Catalog, tmp_path: Path) -> None:
    data = demo_catalog.model_dump(mode="json")
    # 3 x 3 patches keep mapping to seconds on 2 cores; the demo catalog asks for the dense path, these methods have none
    data["model"].update({"method": method, "patch_size": 3, "inference": "auto"})
    data["training"].update({"epochs": 1, "max_steps": 4})
    catalog = parse_catalog(data, demo_catalog.path)
    out = Path(catalog.output.folder)

    runs = run(catalog, workers=1, progress=False)

    scene = xr.open_zarr(out / "demo" / "scene.zarr")
    with rasterio.open(out / "demo" / "landcover.tif") as src:
        assert src.crs.to_string() == scene.attrs["crs"]
        assert (src.height, src.width) == (scene.sizes["y"], scene.sizes["x"])
        classes = src.read(1)
    pattern = xr.open_zarr(out / "demo" / "map.zarr", consolidated=False)["pattern"].values
    assert np.array_equal(classes == 0, pattern == 0)  # every pixel with a modality has a class
    assert (pattern == 1).any() and (pattern == 3).any()  # incomplete pixels (LiDAR gap) were mapped too
    assert json.loads((out / "demo" / "report.json").read_text())["method"] == method
    checkpoint = runs[0].outputs["checkpoint"]
    stages = {row["stage"] for row in json.loads((checkpoint / "training_log.json").read_text())}
    model, _ = load_checkpoint(checkpoint)
    assert model.config.method == method and stages == set(model.stages())
