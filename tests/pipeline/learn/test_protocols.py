"""The missing-modality protocols: exact pattern counts, seeds, tables on disk, MMP masking."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.config.catalog import Protocol
from pipeline.config.errors import CatalogError, InputError
from pipeline.learn.protocols import (
    MAMOL_TABLE1_ROWS,
    incomplete_patterns,
    load_protocol_table,
    mamol_table3_rows,
    mmp_mask,
    pattern_fractions,
    protocol_availability,
    save_protocol_table,
    simulate_eta,
    simulate_rates,
)


def pattern_histogram(table: np.ndarray) -> dict[tuple[bool, ...], int]:
    rows, counts = np.unique(table, axis=0, return_counts=True)
    return {tuple(bool(v) for v in row): int(c) for row, c in zip(rows, counts)}


def test_incomplete_patterns_are_two_to_the_m_minus_two() -> None:
    assert incomplete_patterns(2) == [(True, False), (False, True)]
    three = incomplete_patterns(3)
    assert len(three) == 6 == 2**3 - 2 != 3**2 - 2  # the MaMOL text's "M^2 - 2" would say 7
    assert len(set(three)) == 6
    assert all(any(p) and not all(p) for p in three)
    assert len(incomplete_patterns(4)) == 14
    assert incomplete_patterns(1) == []


@pytest.mark.parametrize("n", [1000, 997, 13])
@pytest.mark.parametrize("eta", [0.5, 0.7, 0.9, 0.33])
@pytest.mark.parametrize("names", [["hs", "lidar"], ["hs", "sar", "dsm"]])
def test_eta_fractions_match_within_one_sample_per_pattern(n: int, eta: float, names: list[str]) -> None:
    table = simulate_eta(n, names, eta, seed=4)
    histogram = pattern_histogram(table)
    patterns = incomplete_patterns(len(names))

    assert table.shape == (n, len(names)) and table.dtype == bool
    assert not any(np.all(~table, axis=1))
    incomplete = sum(histogram.get(p, 0) for p in patterns)
    assert abs(incomplete - eta * n) <= 0.5 + 1e-9
    for pattern in patterns:
        assert abs(histogram.get(pattern, 0) - eta * n / len(patterns)) <= 1.0
    assert histogram.get((True,) * len(names), 0) == n - incomplete


def test_eta_extremes_and_errors() -> None:
    assert simulate_eta(50, ["hs", "lidar"], 0.0, seed=0).all()
    assert not simulate_eta(50, ["hs", "lidar"], 1.0, seed=0).all(axis=1).any()
    with pytest.raises(ValueError, match="eta"):
        simulate_eta(10, ["hs", "lidar"], 1.5, seed=0)
    with pytest.raises(ValueError, match="one modality"):
        simulate_eta(10, ["hs"], 0.5, seed=0)


def test_same_seed_same_table_other_seed_other_order() -> None:
    names = ["hs", "lidar", "sar"]
    a = simulate_eta(500, names, 0.7, seed=11)
    np.testing.assert_array_equal(a, simulate_eta(500, names, 0.7, seed=11))
    b = simulate_eta(500, names, 0.7, seed=12)
    assert not np.array_equal(a, b)
    assert pattern_histogram(a) == pattern_histogram(b)  # same counts, different samples

    r = simulate_rates(500, names, {"hs": 0.8, "lidar": 0.6, "sar": 0.5}, seed=3)
    np.testing.assert_array_equal(r, simulate_rates(500, names, {"hs": 0.8, "lidar": 0.6, "sar": 0.5}, seed=3))


@pytest.mark.parametrize(("first", "other"), [(1.0, 0.3), (0.3, 1.0), (0.75, 0.75), (0.65, 0.65), (0.55, 0.55)])
def test_two_modality_rates_give_the_joint_counts(first: float, other: float) -> None:
    n = 1000
    table = simulate_rates(n, ["hs", "lidar"], {"hs": first, "lidar": other}, seed=0)
    histogram = pattern_histogram(table)

    assert table[:, 0].sum() == round(first * n) and table[:, 1].sum() == round(other * n)
    assert histogram.get((True, True), 0) == round((first + other - 1) * n)
    assert histogram.get((True, False), 0) == round((1 - other) * n)
    assert histogram.get((False, True), 0) == round((1 - first) * n)
    assert histogram.get((False, False), 0) == 0


def test_three_modality_rates_meet_every_marginal_and_never_leave_nothing() -> None:
    n = 800
    names = ["hs", "sar", "dsm"]
    balanced = simulate_rates(n, names, {m: 0.75 for m in names}, seed=1)
    assert balanced.sum(axis=0).tolist() == [600, 600, 600]
    histogram = pattern_histogram(balanced)
    complete_and_pairs = [(True, True, True), (True, True, False), (True, False, True), (False, True, True)]
    assert histogram == {pattern: 200 for pattern in complete_and_pairs}

    for row in mamol_table3_rows(names):
        table = simulate_rates(n, names, row.rates, seed=2)
        assert table.any(axis=1).all()
        assert table.sum(axis=0).tolist() == [round(row.rates[m] * n) for m in names]
        assert table.mean() == pytest.approx(0.75)

    low = simulate_rates(n, names, {"hs": 0.3, "sar": 0.4, "dsm": 0.3}, seed=0)
    assert low.any(axis=1).all() and low.sum(axis=1).max() == 1

    with pytest.raises(ValueError, match="no modality"):
        simulate_rates(n, names, {"hs": 0.3, "sar": 0.3, "dsm": 0.3}, seed=0)
    with pytest.raises(ValueError, match="not among"):
        simulate_rates(n, names, {"lidar": 0.5}, seed=0)


def test_mamol_table1_rows() -> None:
    as_percent = [(round(r.eta * 100), round(r.first * 100), round(r.others * 100)) for r in MAMOL_TABLE1_ROWS]
    assert as_percent == [
        (50, 100, 50), (50, 50, 100), (50, 75, 75),
        (70, 100, 30), (70, 30, 100), (70, 65, 65),
        (90, 100, 10), (90, 10, 100), (90, 55, 55),
    ]  # fmt: skip
    for row in MAMOL_TABLE1_ROWS:  # every setting makes exactly eta of the samples incomplete
        table = simulate_rates(1000, ["hs", "lidar"], row.rates(["hs", "lidar"]), seed=0)
        assert (~table.all(axis=1)).sum() == round(row.eta * 1000)
    assert MAMOL_TABLE1_ROWS[3].rates(["hs", "sar", "dsm"]) == {"hs": 1.0, "sar": 0.3, "dsm": 0.3}
    assert MAMOL_TABLE1_ROWS[0].row(["hs", "lidar"]).label == "eta 50%: hs 100% / lidar 50%"


def test_mamol_table3_rows_are_at_75_percent_overall() -> None:
    rows = mamol_table3_rows(["hs", "sar", "dsm"])
    assert [r.label for r in rows][0] == "balanced 75%"
    assert len(rows) == 4
    for row in rows:
        assert np.mean(list(row.rates.values())) == pytest.approx(0.75)
    assert rows[2].rates == {"hs": 0.625, "sar": 1.0, "dsm": 0.625}


def test_protocol_table_round_trips_and_repeats_a_run(tmp_path: Path) -> None:
    names = ["hs", "lidar", "sar"]
    table = simulate_eta(257, names, 0.9, seed=5)
    index = np.arange(1000, 1257)
    path = save_protocol_table(tmp_path / "run" / "protocol.csv", table, names, {"seed": 5, "eta": 0.9}, index)

    loaded = load_protocol_table(path)
    assert loaded.modalities == names
    np.testing.assert_array_equal(loaded.table, table)
    np.testing.assert_array_equal(loaded.sample_index, index)
    assert loaded.meta["seed"] == 5 and loaded.meta["eta"] == 0.9
    repeated = simulate_eta(len(loaded.table), loaded.modalities, loaded.meta["eta"], loaded.meta["seed"])
    np.testing.assert_array_equal(repeated, loaded.table)

    assert path.read_text().splitlines()[0] == "sample_index,hs,lidar,sar"
    assert json.loads((tmp_path / "run" / "protocol.json").read_text())["modalities"] == names
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["protocol.csv", "protocol.json"]


def test_corrupt_protocol_table_is_an_input_error(tmp_path: Path) -> None:
    path = save_protocol_table(tmp_path / "p.csv", np.ones((3, 2), dtype=bool), ["hs", "lidar"], {"seed": 0})
    path.write_text("sample_index,hs,lidar\n0,1,2\n")
    with pytest.raises(InputError, match=r"p\.csv.*0 or 1"):
        load_protocol_table(path)
    with pytest.raises(InputError, match="no such file"):
        load_protocol_table(tmp_path / "absent.csv")


def test_mmp_mask_keeps_at_least_one_and_drops_about_half() -> None:
    available = torch.ones(20_000, 3, dtype=torch.bool)
    available[:5000, 2] = False  # some samples really lack a modality
    available[5000:5010] = False  # some have nothing at all
    generator = torch.Generator().manual_seed(0)
    kept = mmp_mask(available, p=0.5, generator=generator)

    assert not (kept & ~available).any()  # never adds a modality
    has_any = available.any(dim=1)
    assert kept[has_any].any(dim=1).all()
    assert not kept[~has_any].any()
    # conditioned on keeping one of three: 7 equally likely patterns, 4 of them keep a given modality
    full = available.all(dim=1)
    assert kept[full].float().mean().item() == pytest.approx(4 / 7, abs=0.02)
    # of two: 3 equally likely patterns, complete 1/3
    two = has_any & ~full
    assert kept[two][:, :2].all(dim=1).float().mean().item() == pytest.approx(1 / 3, abs=0.03)

    again = mmp_mask(available, p=0.5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(kept, again)
    with pytest.raises(ValueError, match="p must"):
        mmp_mask(available, p=1.0)


def test_protocol_availability_dispatches_on_the_catalog_kind() -> None:
    names = ["hs", "lidar"]
    assert protocol_availability(Protocol(kind="none"), 10, names, seed=0).all()
    assert protocol_availability(Protocol(kind="mmp"), 10, names, seed=0).all()
    np.testing.assert_array_equal(
        protocol_availability(Protocol(kind="eta", eta=0.7), 100, names, seed=3), simulate_eta(100, names, 0.7, 3)
    )
    rates = protocol_availability(Protocol(kind="rates", rates={"lidar": 0.3}), 100, names, seed=3)
    assert rates.sum(axis=0).tolist() == [100, 30]
    with pytest.raises(CatalogError, match=r"training\.protocol\.rates"):
        protocol_availability(Protocol(kind="rates"), 100, names, seed=0)
    with pytest.raises(CatalogError, match=r"training\.protocol\.rates.*not among"):
        protocol_availability(Protocol(kind="rates", rates={"sar": 0.5}), 100, names, seed=0)


def test_pattern_fractions_are_the_rows_and_follow_the_code_order() -> None:
    names = ["hs", "lidar"]
    balanced = pattern_fractions(Protocol(kind="rates", rates={"hs": 0.75, "lidar": 0.75}), names)
    assert balanced == {(True, False): 0.25, (False, True): 0.25, (True, True): 0.5}
    assert list(balanced) == [(True, False), (False, True), (True, True)]  # pattern codes 1, 2, 3
    assert pattern_fractions(Protocol(kind="rates", rates={"hs": 1.0, "lidar": 0.3}), names) == {(True, False): 0.7, (True, True): 0.3}
    assert pattern_fractions(Protocol(kind="none"), names) == {(True, True): 1.0}
    three = pattern_fractions(Protocol(kind="eta", eta=0.7), ["hs", "lidar", "sar"])
    assert len(three) == 7 and three[(True, True, True)] == pytest.approx(0.3)
    assert sum(three.values()) == pytest.approx(1.0)
    assert all(v == pytest.approx(0.7 / 6, abs=1e-4) for k, v in three.items() if not all(k))
