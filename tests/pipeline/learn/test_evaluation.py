"""Evaluation tables: the random-forest floor beside every method, accuracy per pattern and footprint, seed spread."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.config.catalog import Catalog, load_catalog
from pipeline.config.errors import InputError
from pipeline.evaluate import main as evaluate_main
from pipeline.learn.evaluation import (
    FOREST,
    MethodVariant,
    aggregate,
    evaluate,
    merge_results,
    paired_gap,
    read_results,
    variant_paths,
    write_tables,
)
from pipeline.learn.training import prepare_training_data


def test_scene_protocol_reports_the_floor_patterns_and_footprints(demo_catalog: Catalog, tmp_path: Path) -> None:
    demo_catalog.training.max_steps = 4
    results = evaluate(demo_catalog, "scene", ["baseline"], [0, 1], tmp_path / "eval", max_test_pixels=600, progress=False,
                       inference="patch")
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
    written = read_results(tmp_path / "eval")  # the file records what the runs were trained with
    assert written["training"]["max_steps"] == 4 and written["training"]["augment"] == "none"
    assert written["model"]["method"] == demo_catalog.model.method


def test_both_paths_are_tested_side_by_side_on_the_same_pixels_and_masks(demo_catalog: Catalog, tmp_path: Path) -> None:
    demo_catalog.training.max_steps = 3
    demo_catalog.training.epochs = 1
    results = evaluate(demo_catalog, "mamol-table1", ["baseline", "mmp"], [0], tmp_path / "eval", max_test_pixels=300,
                       progress=False, rows=[1], inference="both", mask_draws=3)
    assert results["methods"] == ["baseline", "baseline [dense]", "mmp", "mmp [dense]", FOREST]
    runs = {r["method"]: r for r in results["runs"]}
    assert runs["baseline [dense]"]["epochs"] == 1
    # the same test pixels with the same availability patterns for every path
    counts = {m: {k: g["n"] for k, g in r["patterns"].items()} for m, r in runs.items()}
    assert counts["baseline"] == counts["baseline [dense]"] == counts["mmp"] == counts["mmp [dense]"] == counts[FOREST]
    assert len(counts["baseline"]) >= 2  # the row's protocol masks a modality on part of the scene
    # every test pixel under each of the row's patterns (HS 50 / LiDAR 100: clear and LiDAR alone, half each), the same
    # pixels for every path: clear keeps every pixel with a modality (more than the mask's clear half), LiDAR alone those
    # of them with LiDAR
    swept = {m: r["every_pattern"] for m, r in runs.items()}
    tested = runs["baseline"]["n"] + runs["baseline"]["test_pixels_without_any_modality"]
    for method, every in swept.items():
        assert {k: v["weight"] for k, v in every["patterns"].items()} == {"lidar only": 0.5, "clear": 0.5}, method
        pixels = {k: v["n"] for k, v in every["patterns"].items()}
        assert pixels == {k: v["n"] for k, v in swept["baseline"]["patterns"].items()}, method
        assert runs[method]["n"] <= pixels["clear"] <= tested and pixels["lidar only"] < pixels["clear"]
        assert pixels["clear"] > counts[method]["clear"]
        oas = [v["oa"] for v in every["patterns"].values()]
        assert min(oas) <= every["oa"] <= max(oas)
    # the OA over the row's test masks: drawn on the dense path (the row's own mask first, then two more, each its own
    # pixels), exactly the sweep's on patches and for the floor
    dense = runs["baseline [dense]"]["mask_mean"]
    assert dense["draws"] == 3 and dense["oas"][0] == runs["baseline [dense]"]["oa"]
    assert dense["oa"] == pytest.approx(np.mean(dense["oas"])) and len(set(dense["oas"])) > 1
    for method in ("baseline", "mmp", FOREST):
        assert runs[method]["mask_mean"] == {"oa": swept[method]["oa"], "oas": None, "draws": None}, method
    table = (tmp_path / "eval" / "table.md").read_text()
    assert "baseline [dense]" in table and "OA over test masks" in table


def test_a_row_with_one_pattern_gives_the_every_pattern_oa_of_its_test_mask(demo_catalog: Catalog, tmp_path: Path) -> None:
    demo_catalog.training.max_steps = 2
    demo_catalog.training.epochs = 1
    # lvpcnet-table1's first row trains and tests complete: its test mask and its one pattern are the same availability
    results = evaluate(demo_catalog, "lvpcnet-table1", ["baseline"], [0], tmp_path / "eval", max_test_pixels=300,
                       progress=False, rows=[0], inference="both")
    assert results["methods"] == ["baseline", "baseline [dense]", FOREST]
    for run in results["runs"]:
        assert list(run["every_pattern"]["patterns"]) == ["clear"], run["method"]
        assert run["every_pattern"]["patterns"]["clear"]["n"] == run["n"]
        assert run["every_pattern"]["oa"] == run["oa"], run["method"]
        assert run["mask_mean"]["oa"] == run["oa"], run["method"]  # every draw of a one-pattern mask is the same mask
    assert next(r for r in results["runs"] if r["method"] == "baseline [dense]")["mask_mean"]["draws"] == 1
    assert "OA with every test pixel under every pattern of the row" in (tmp_path / "eval" / "table.md").read_text()


def test_variant_paths_follow_the_methods_dense_support() -> None:
    baseline, mmp, mamol = MethodVariant.parse("baseline"), MethodVariant.parse("mmp"), MethodVariant.parse("mamol")
    lvpcnet = MethodVariant.parse("lvpcnet")
    assert variant_paths(baseline, "dense", frozen=False) == ["dense"] and variant_paths(baseline, "patch", frozen=True) == ["patch"]
    assert variant_paths(baseline, "auto", frozen=False) == ["patch"]  # trained whole, its dense accuracy is not measured
    assert variant_paths(baseline, "auto", frozen=True) == ["dense"]  # probing a frozen backbone it was ahead densely
    assert variant_paths(mamol, "auto", frozen=False) == ["dense"] and variant_paths(mamol, "patch", frozen=False) == ["patch"]
    assert variant_paths(mmp, "auto", frozen=True) == ["dense"] and variant_paths(mmp, "auto", frozen=False) == ["patch"]
    assert variant_paths(baseline, "both", frozen=True) == ["patch", "dense"]
    assert variant_paths(mmp, "dense", frozen=False) == ["dense"] and variant_paths(mmp, "both", frozen=False) == ["patch", "dense"]
    assert variant_paths(lvpcnet, "dense", frozen=True) == ["dense"] and variant_paths(lvpcnet, "auto", frozen=True) == ["patch"]
    with pytest.raises(ValueError, match="inference must be one of"):
        variant_paths(baseline, "sparse", frozen=False)



@pytest.mark.parametrize(("method", "message"), [
    ("mamol:window_size=3", r"method 'mamol:window_size=3': model\.params\.window_size: expected an even number of pixels >= 2, found 3"),
    ("mamol:local_kernel=4", r"model\.params\.local_kernel: expected 0 or an odd number of pixels, found 4"),
    ("mamol:windw_size=2", r"model\.params\.windw_size: expected a parameter of mamol .*misspelt or unknown"),
    ("mamol:window_size=6", r"training\.dense\.crop_size: expected a multiple of the model's window_size \(6\), found 32"),
    ("mamoll", r"method 'mamoll': method: expected a registered method"),
])
def test_a_variant_the_catalog_would_refuse_is_refused_before_any_training(
    demo_catalog: Catalog, tmp_path: Path, method: str, message: str,
) -> None:
    with pytest.raises(ValueError, match=message):
        evaluate(demo_catalog, "mamol-table1", ["baseline", method], [0], tmp_path / "eval", rows=[1], progress=False)
    assert not (tmp_path / "eval").exists()  # refused before the first model: nothing written


def test_a_variants_values_are_json_or_plain_text() -> None:
    variant = MethodVariant.parse("mamol:use_dynamic=false;num_experts=4;dense_readout=pixel;ranks=[2, 4];lora")
    assert variant.method == "mamol" and variant.label.startswith("mamol:use_dynamic=false")
    assert variant.params == {"use_dynamic": False, "num_experts": 4, "dense_readout": "pixel", "ranks": [2, 4], "lora": True}


def test_runs_split_over_seeds_and_rows_merge_into_one_table(
    demo_catalog: Catalog, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    demo_catalog.training.max_steps = 3
    demo_catalog.training.epochs = 1
    kwargs: dict = {"max_test_pixels": 300, "progress": False, "inference": "patch"}
    a = evaluate(demo_catalog, "mamol-table1", ["baseline"], [0], tmp_path / "a", rows=[2], **kwargs)
    b = evaluate(demo_catalog, "mamol-table1", ["baseline"], [1], tmp_path / "b", rows=[0, 2], **kwargs)
    merged = merge_results({tmp_path / "a" / "results.json": read_results(tmp_path / "a"),
                            tmp_path / "b" / "results.json": read_results(tmp_path / "b"),
                            tmp_path / "b-again": read_results(tmp_path / "b")})  # the same runs twice: kept once
    row0, row2 = b["settings"]
    assert merged["settings"] == [row0, row2]  # protocol order, though part a only had row 2
    assert merged["seeds"] == [0, 1] and merged["methods"] == ["baseline", FOREST]
    assert len(merged["runs"]) == len(a["runs"]) + len(b["runs"])
    oas = [r["oa"] for part in (a, b) for r in part["runs"] if r["setting"] == row2 and r["method"] == "baseline"]
    entry = next(e for e in merged["table"] if e["setting"] == row2 and e["method"] == "baseline")
    assert entry["seeds"] == 2 and entry["oa_mean"] == pytest.approx(np.mean(oas))
    assert entry["oa_std"] == pytest.approx(np.std(oas, ddof=1))
    write_tables(merged, tmp_path / "merged")
    table = (tmp_path / "merged" / "table.md").read_text()
    assert "(n=1)" in table.splitlines()[4] and "(n=" not in table.splitlines()[5]  # row 0 has seed 1 only

    tampered = read_results(tmp_path / "a")
    tampered["runs"][0]["oa"] += 0.01
    with pytest.raises(InputError, match=r"tampered/results.json: runs\[setting=.*, seed=0\]\.oa: expected .*the same run twice"):
        merge_results({tmp_path / "a" / "results.json": read_results(tmp_path / "a"),
                       tmp_path / "tampered" / "results.json": tampered})
    assert merged["training"] == a["training"] and merged["training"]["max_steps"] == 3
    otherwise_trained = {**read_results(tmp_path / "b"), "training": {**b["training"], "augment": "dihedral"}}
    mixed = merge_results({tmp_path / "a": read_results(tmp_path / "a"), tmp_path / "b2": otherwise_trained})
    assert mixed["training"] is None and mixed["model"] == a["model"]  # not one training: each part's file says its own
    other = {**read_results(tmp_path / "b"), "protocol": "mamol-table3"}
    with pytest.raises(InputError, match=r"other.json: protocol: expected 'mamol-table1'"):
        merge_results({tmp_path / "a": a, tmp_path / "other.json": other})
    with pytest.raises(InputError, match=r"missing/results.json: results.json: expected the results"):
        read_results(tmp_path / "missing")

    # the command line: the same merge, and one error line (nothing written) for a part that is not there
    assert evaluate_main(["--merge", str(tmp_path / "a"), str(tmp_path / "b"), "--output", str(tmp_path / "cli")]) == 0
    assert (tmp_path / "cli" / "table.md").read_text() == table
    capsys.readouterr()
    assert evaluate_main(["--merge", str(tmp_path / "a"), str(tmp_path / "gone"), "--output", str(tmp_path / "cli2")]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "gone/results.json" in err[0] and not (tmp_path / "cli2").exists()


def test_a_data_seed_holds_the_test_pixels_and_masks_while_the_seeds_vary_the_training(
    demo_catalog: Catalog, tmp_path: Path
) -> None:
    demo_catalog.training.max_steps = 2
    demo_catalog.training.epochs = 1
    results = evaluate(demo_catalog, "mamol-table1", ["baseline"], [0, 1], tmp_path / "eval", max_test_pixels=300,
                       progress=False, rows=[5], inference="patch", data_seed=3)
    runs = [r for r in results["runs"] if r["method"] == "baseline"]
    assert [(r["seed"], r["data_seed"]) for r in runs] == [(0, 3), (1, 3)] and results["data_seed"] == 3
    # the same test pixels under the same coherent mask: identical counts per pattern and footprint
    for kind in ("patterns", "footprints"):
        counts = [{g: v["n"] for g, v in r[kind].items()} for r in runs]
        assert counts[0] == counts[1], kind
    assert len(runs[0]["patterns"]) >= 2


def test_the_command_line_tests_every_test_pixel_unless_told_to_cap(
    demo_catalog: Catalog, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    demo_catalog.training.max_steps = 2
    demo_catalog.training.epochs = 1
    catalog_file = tmp_path / "demo.yaml"
    catalog_file.write_text(yaml.safe_dump(demo_catalog.model_dump(mode="json")))
    catalog = load_catalog(catalog_file)
    split = prepare_training_data(catalog, catalog.scene(None), 0).split
    args = [str(catalog_file), "--methods", "baseline", "--rows", "1", "--inference", "patch", "--quiet"]
    for extra, expected in (([], len(split.test_targets)), (["--max-test-pixels", "300", "--no-pattern-sweep"], 300)):
        assert evaluate_main([*args, *extra, "--output", str(tmp_path / f"eval{len(extra)}")]) == 0
        run = read_results(tmp_path / f"eval{len(extra)}")["runs"][0]
        assert run["n"] + run["test_pixels_without_any_modality"] == pytest.approx(expected, abs=5)  # the cap rounds per class
        assert ("every_pattern" in run) == (not extra)  # the sweep runs unless told not to
    assert expected < len(split.test_targets)
    capsys.readouterr()


def test_the_spread_and_the_gaps_are_paired_on_the_seeds_both_methods_ran(tmp_path: Path) -> None:
    def run(method: str, seed: int, oa: float, swept: float | None = None) -> dict:
        every = {} if swept is None else {"every_pattern": {"oa": swept, "patterns": {"clear": {"oa": swept, "n": 9, "weight": 1.0}}},
                                          "mask_mean": {"oa": swept - 0.01, "oas": None, "draws": None}}
        return {"setting": "row", "method": method, "seed": seed, "oa": oa, "aa": oa, "kappa": oa, "confusion": [[1]], **every}

    # mamol ran seeds 0 and 1 only; on seed 2 the baseline fell: a paired gap must not count it
    # (the every-pattern OA: three seeds of the baseline, one of the forest, none of mamol: results written before it)
    runs = [run("baseline", 0, 0.80, 0.81), run("baseline", 1, 0.84, 0.83), run("baseline", 2, 0.70, 0.79),
            run("mamol", 0, 0.83), run("mamol", 1, 0.85),
            run(FOREST, 0, 0.60, 0.6), run(FOREST, 1, 0.62), run(FOREST, 2, 0.61)]
    methods = ["baseline", "mamol", FOREST]
    results = {"protocol": "mamol-table1", "scene": "s", "seeds": [0, 1, 2], "settings": ["row"], "methods": methods,
               "classes": ["a"], "runs": runs, "table": aggregate(runs, ["row"], methods)}
    spread = {e["method"]: e["oa_spread"] for e in results["table"]}
    assert spread == pytest.approx({"baseline": 0.14, "mamol": 0.02, FOREST: 0.02})
    assert paired_gap(runs, "row", "mamol", "baseline") == (pytest.approx(0.02), 2)  # not 0.84 - 0.78
    assert paired_gap(runs, "row", "mamol", "nobody") == (None, 0)
    write_tables(results, tmp_path)
    table = (tmp_path / "table.md").read_text()
    spread_section = table.split("## Seed spread and paired gaps")[1].split("\n## ")[0]
    rows = {line.split(" | ")[1]: line for line in spread_section.splitlines() if line.startswith("| row | ")}
    assert rows["mamol"] == "| row | mamol | 2 | 2.00 | n/a | n/a | n/a | +2.00 | +23.00 |"
    assert rows[FOREST] == "| row | random forest (floor) | 3 | 2.00 | 59.00 | – | – | -17.00 |  |"
    assert rows["baseline"] == "| row | baseline | 3 | 14.00 | 80.00 ± 2.00 | 4.00 | 4.00 |  | +17.00 |"
    baseline = next(e for e in results["table"] if e["method"] == "baseline")["every_pattern"]
    assert baseline["oa_mean"] == pytest.approx(0.81) and baseline["patterns"]["clear"]["pixels_mean"] == 9
    assert "| row | baseline | 81.00 ± 2.00 | 81.00 ± 2.00 [9; w 1.00] |" in table and "row's clear" in table
    header = (tmp_path / "table.csv").read_text().splitlines()[0]
    assert "oa_spread" in header and "every_pattern_oa_spread" in header and header.endswith("mask_mean_oa_spread")
