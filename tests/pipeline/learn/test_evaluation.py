"""Evaluation tables: the random-forest floor beside every method, accuracy per pattern and footprint, seed spread."""

from __future__ import annotations

from pathlib import Path

from pipeline.config.catalog import Catalog
from pipeline.learn.evaluation import FOREST, evaluate


def test_scene_protocol_reports_the_floor_patterns_and_footprints(demo_catalog: Catalog, tmp_path: Path) -> None:
    demo_catalog.training.max_steps = 4
    results = evaluate(demo_catalog, "scene", ["baseline"], [0, 1], tmp_path / "eval", max_test_pixels=600, progress=False)
    assert results["methods"] == ["baseline", FOREST]
    forest_runs = [r for r in results["runs"] if r["method"] == FOREST]
    assert [r["seed"] for r in forest_runs] == [0, 1]
    run = forest_runs[0]
    # The small demo has a cloud over HS and a LiDAR strip: the test pixels fall in each.
    assert {"clear", "hs only", "lidar only"} <= set(run["patterns"])
    assert {"clear", "under clouds", "lidar failure (flight strip never flown)"} <= set(run["footprints"])
    assert sum(g["n"] for g in run["patterns"].values()) == run["n"]
    clear_pattern = run["patterns"]["clear"]
    assert 0 <= clear_pattern["oa"] <= 1
    table = (tmp_path / "eval" / "table.md").read_text()
    assert FOREST in table and "±" in table
    assert "OA by availability pattern" in table and "OA by footprint" in table
    entry = next(e for e in results["table"] if e["method"] == "baseline")
    assert entry["seeds"] == 2 and entry["footprints"]["under clouds"]["seeds"] == 2
