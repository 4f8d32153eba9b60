"""The papers' missing-modality protocols: which modalities each sample keeps.

Three ways to simulate missing modalities on samples (training or test pixels):

* ``simulate_eta``: a missing rate eta; eta of the samples are incomplete, spread
  evenly over the 2^M - 2 incomplete patterns, 1 - eta complete (MaMOL, after
  the missing-aware-prompts protocol).
* ``simulate_rates``: an availability rate per modality (MaMOL Table 1 columns
  "HS / other", e.g. HS 100 %, LiDAR 30 %).
* ``mmp_mask``: MMP's training-time masking, drawn anew at every step.

The simulated tables are exact (counts, not Bernoulli draws) and seeded; saved
with ``save_protocol_table`` next to a run, an experiment can be repeated exactly.
A simulated table says which modalities a sample may use; callers combine it
with the scene's real availability (``available & table``).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from models.masking import (
    mmp_mask,  # MMP masks inside the model; re-exported for the protocols' users
)
from models.patterns import complete_pattern, pattern_members
from pipeline.config.catalog import Protocol
from pipeline.config.errors import CatalogError, InputError
from pipeline.files import (
    write_text,
)

MMP_PROTOCOL_DROP = 0.5
"""Protocol ``mmp``: each available modality is dropped with this probability at every training step."""

# --------------------------------------------------------------------------- patterns


def incomplete_patterns(count: int) -> list[tuple[bool, ...]]:
    """The 2^M - 2 incomplete patterns of M modalities, in pattern-code order.

    Pattern code order (:mod:`models.patterns`); the all-missing (code 0) and complete (2^M - 1) patterns are
    left out. Note: the MaMOL text writes "M^2 - 2"; that equals 2^M - 2 for two
    modalities (2) but not for three (7 vs 6). The patterns of three modalities are
    the 6 = 2^3 - 2 listed here.
    """
    if count < 1:
        raise ValueError(f"at least one modality is needed, got {count}")
    return [pattern_members(code, count) for code in range(1, complete_pattern(count))]


def _round_half_up(value: float) -> int:
    """Round to the nearest integer, halves up (Python's ``round`` rounds halves to even)."""
    return int(np.floor(value + 0.5 + 1e-9))


# --------------------------------------------------------------------------- eta


def simulate_eta(n: int, modalities: Sequence[str], eta: float, seed: int) -> np.ndarray:
    """Availability of ``n`` samples under missing rate ``eta``: bool (n, M).

    Exactly round(eta * n) samples are incomplete, split evenly over the 2^M - 2
    incomplete patterns; when they do not divide evenly the first patterns in code
    order take one more each. The rows are then shuffled with ``seed``, so each
    pattern's count is within one sample of eta * n / (2^M - 2).
    """
    if not 0 <= eta <= 1:
        raise ValueError(f"eta must lie in [0, 1], got {eta}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    count = len(modalities)
    patterns = incomplete_patterns(count)
    incomplete = _round_half_up(eta * n)
    if incomplete and not patterns:
        raise ValueError(f"one modality has no incomplete pattern: eta must be 0, got {eta}")
    rows: list[np.ndarray] = []
    if patterns:
        base, extra = divmod(incomplete, len(patterns))
        for index, pattern in enumerate(patterns):
            rows.append(np.tile(np.array(pattern, dtype=bool), (base + (index < extra), 1)))
    rows.append(np.ones((n - incomplete, count), dtype=bool))
    table = np.concatenate(rows, axis=0)
    return table[np.random.default_rng(seed).permutation(n)]


# --------------------------------------------------------------------------- rates


def _rates_vector(modalities: Sequence[str], rates: dict[str, float]) -> np.ndarray:
    unknown = sorted(set(rates) - set(modalities))
    if unknown:
        raise ValueError(f"rates name {unknown}, not among the modalities {list(modalities)}")
    vector = np.array([float(rates.get(m, 1.0)) for m in modalities])
    if np.any((vector < 0) | (vector > 1)):
        raise ValueError(f"availability rates must lie in [0, 1], got {dict(zip(modalities, vector.tolist()))}")
    return vector


def simulate_rates(n: int, modalities: Sequence[str], rates: dict[str, float], seed: int) -> np.ndarray:
    """Availability of ``n`` samples with an availability rate per modality: bool (n, M).

    ``rates`` maps modality names to the fraction of samples that have it (a
    modality not named has rate 1). Exactly round(rate * n) samples have each
    modality, and no sample is left with nothing.

    Construction (deterministic, then rows shuffled with ``seed``): lay the samples
    on a circle; modality 0 takes a run of k_0 consecutive samples from position 0,
    modality 1 the next k_1 samples from where modality 0 stopped (wrapping
    around), and so on. Each marginal is exactly k_m, and since sum(k) >= n the runs
    cover every sample; every sample has floor or ceil of sum(k) / n modalities, so
    availability is spread as evenly as the rates allow. For two modalities with
    rates a, b this gives: both a + b - 1, only the first 1 - b, only the second
    1 - a (e.g. 75/75: 50 % complete, 25 % each alone). For three at 75 %: 25 %
    complete and 25 % each pair.

    Raises:
        ValueError: a rate outside [0, 1], an unknown modality, or rates whose
            counts sum to fewer than ``n`` (some sample would have nothing).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    vector = _rates_vector(modalities, rates)
    counts = [_round_half_up(rate * n) for rate in vector]
    if sum(counts) < n:
        raise ValueError(
            f"rates {dict(zip(modalities, vector.tolist()))} give {sum(counts)} modality-samples for {n} samples: "
            "some sample would have no modality (the rates must sum to at least 1)"
        )
    table = np.zeros((n, len(modalities)), dtype=bool)
    if n == 0:
        return table
    start = 0
    for column, count in enumerate(counts):
        table[(start + np.arange(count)) % n, column] = True
        start = (start + count) % n
    return table[np.random.default_rng(seed).permutation(n)]


# --------------------------------------------------------------------------- the papers' tables


@dataclass(frozen=True)
class RatesRow:
    """One missing-modality setting: a label and the availability rate of each modality."""

    label: str
    rates: dict[str, float]
    eta: float | None = None


@dataclass(frozen=True)
class Table1Row:
    """A MaMOL Table 1 setting for two modalities: availability of the first (HS) and of the other.

    At missing rate eta the paper's three columns are: HS 100 % / other 1 - eta;
    HS 1 - eta / other 100 %; both 1 - eta / 2. In each, a fraction eta of the
    samples is incomplete. Train and test use the same setting.
    """

    eta: float
    first: float
    others: float

    def rates(self, modalities: Sequence[str]) -> dict[str, float]:
        """Rates for a dataset's modalities: the first takes ``first``, every other ``others``."""
        return {m: (self.first if i == 0 else self.others) for i, m in enumerate(modalities)}

    def row(self, modalities: Sequence[str]) -> RatesRow:
        names = list(modalities)
        label = f"eta {self.eta:.0%}: {names[0]} {self.first:.0%} / {'+'.join(names[1:]) or 'other'} {self.others:.0%}"
        return RatesRow(label=label, rates=self.rates(names), eta=self.eta)


MAMOL_TABLE1_ROWS: tuple[Table1Row, ...] = (
    Table1Row(eta=0.5, first=1.0, others=0.5),
    Table1Row(eta=0.5, first=0.5, others=1.0),
    Table1Row(eta=0.5, first=0.75, others=0.75),
    Table1Row(eta=0.7, first=1.0, others=0.3),
    Table1Row(eta=0.7, first=0.3, others=1.0),
    Table1Row(eta=0.7, first=0.65, others=0.65),
    Table1Row(eta=0.9, first=1.0, others=0.1),
    Table1Row(eta=0.9, first=0.1, others=1.0),
    Table1Row(eta=0.9, first=0.55, others=0.55),
)
"""The nine settings of MaMOL Table 1: at eta 50 %: 100/50, 50/100, 75/75; at 70 %:
100/30, 30/100, 65/65; at 90 %: 100/10, 10/100, 55/55 (first modality / others)."""


def mamol_table3_rows(modalities: Sequence[str], overall: float = 0.75) -> list[RatesRow]:
    """Settings for three (or more) modalities at ``overall`` mean availability (MaMOL Table 3: 75 %).

    Our choice of rows (the paper gives the overall rate only):

    * "balanced": every modality at ``overall`` (three at 75 %: 25 % complete,
      25 % each pair, see ``simulate_rates``);
    * "<m> complete", one per modality: that modality at 100 %, the others sharing
      the missing share equally, so the mean stays ``overall`` (three modalities at
      75 %: 100 / 62.5 / 62.5).
    """
    names = list(modalities)
    count = len(names)
    if count < 2:
        raise ValueError(f"a multi-modality setting needs at least two modalities, got {names}")
    rows = [RatesRow(label=f"balanced {overall:.0%}", rates={m: overall for m in names}, eta=None)]
    others = (overall * count - 1.0) / (count - 1)
    if not 0 <= others <= 1:
        raise ValueError(f"overall availability {overall} cannot keep one of {count} modalities complete")
    for full in names:
        rates = {m: (1.0 if m == full else round(others, 6)) for m in names}
        rows.append(RatesRow(label=f"{full} complete, others {others:.1%}", rates=rates, eta=None))
    return rows


# --------------------------------------------------------------------------- tables on disk


@dataclass
class ProtocolTable:
    """A simulated availability table: one row per sample, one bool column per modality."""

    table: np.ndarray
    modalities: list[str]
    meta: dict[str, Any] = field(default_factory=dict)
    sample_index: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.sample_index is None:
            self.sample_index = np.arange(len(self.table))


def _sidecar(path: Path) -> Path:
    return path.with_suffix(".json")


def save_protocol_table(
    path: str | Path,
    table: np.ndarray,
    modalities: Sequence[str],
    meta: dict[str, Any],
    sample_index: np.ndarray | None = None,
) -> Path:
    """Write ``table`` as CSV (``sample_index`` + one 0/1 column per modality) and ``meta`` as a JSON sidecar.

    ``path`` ends in ``.csv``; the sidecar is the same name with ``.json`` (seed,
    eta, rates, ...). Both files are written to temporary names and moved into place.
    """
    path = Path(path)
    if path.suffix.lower() != ".csv":
        raise ValueError(f"a protocol table is a .csv file, got {path}")
    table = np.asarray(table, dtype=bool)
    names = list(modalities)
    if table.ndim != 2 or table.shape[1] != len(names):
        raise ValueError(f"table {table.shape} does not have one column per modality {names}")
    index = np.arange(len(table)) if sample_index is None else np.asarray(sample_index)
    if index.shape != (len(table),):
        raise ValueError(f"sample_index {index.shape} does not have one entry per row ({len(table)})")
    lines = [",".join(["sample_index", *names])]
    lines += [",".join([str(int(i)), *("1" if v else "0" for v in row)]) for i, row in zip(index, table)]
    sidecar = {"modalities": names, "rows": len(table), **meta}
    write_text(_sidecar(path), json.dumps(sidecar, indent=2, default=str))
    write_text(path, "\n".join(lines) + "\n")
    return path


def load_protocol_table(path: str | Path) -> ProtocolTable:
    """Read a table written by ``save_protocol_table`` (with its JSON sidecar)."""
    path = Path(path)
    sidecar = _sidecar(path)
    for file in (path, sidecar):
        if not file.is_file():
            raise InputError(file, "(file)", "a protocol table and its JSON sidecar", "no such file")
    try:
        meta = json.loads(sidecar.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(sidecar, "(syntax)", "valid JSON", str(exc)) from exc
    with path.open(newline="") as stream:
        reader = csv.reader(stream)
        header = next(reader, None)
        rows = list(reader)
    if not header or header[0] != "sample_index" or len(header) < 2:
        raise InputError(path, "header", "'sample_index' then one column per modality", repr(header))
    modalities = header[1:]
    if meta.get("modalities", modalities) != modalities:
        raise InputError(sidecar, "modalities", f"the CSV's columns {modalities}", repr(meta.get("modalities")))
    try:
        values = np.array([[int(v) for v in row] for row in rows], dtype=np.int64).reshape(len(rows), len(header))
    except ValueError as exc:
        raise InputError(path, "rows", f"integers, {len(header)} per row", str(exc)) from exc
    flags = values[:, 1:]
    if not np.isin(flags, (0, 1)).all():
        raise InputError(path, "rows", "0 or 1 in each modality column", f"{sorted(set(np.unique(flags)) - {0, 1})}")
    return ProtocolTable(table=flags.astype(bool), modalities=modalities, meta=meta, sample_index=values[:, 0])


# --------------------------------------------------------------------------- from the catalog


def protocol_availability(
    protocol: Protocol, n: int, modalities: Sequence[str], seed: int, catalog_file: Path | None = None
) -> np.ndarray:
    """The simulated availability of ``n`` samples under the catalog's protocol: bool (n, M).

    ``none`` and ``mmp`` give all True: ``none`` keeps the scene's real
    availability, and ``mmp`` masks anew at every training step, for every
    method (``pipeline.learn.training.step_availability``).
    """
    names = list(modalities)
    if protocol.kind in ("none", "mmp"):
        return np.ones((n, len(names)), dtype=bool)
    if protocol.kind == "eta":
        try:
            return simulate_eta(n, names, protocol.eta, seed)
        except ValueError as exc:
            expected = "a missing rate the modalities allow"
            raise CatalogError(catalog_file, "training.protocol.eta", expected, str(exc)) from exc
    if protocol.rates is None:
        raise CatalogError(catalog_file, "training.protocol.rates", "a rate per modality for kind 'rates'", "none")
    try:
        return simulate_rates(n, names, protocol.rates, seed)
    except ValueError as exc:
        raise CatalogError(catalog_file, "training.protocol.rates", "valid availability rates", str(exc)) from exc


PATTERN_FRACTION_SAMPLES = 10_000
"""Samples a protocol is simulated on to read its pattern fractions (the simulations are exact counts, so these are exact
to 1e-4)."""


def pattern_fractions(protocol: Protocol, modalities: Sequence[str]) -> dict[tuple[bool, ...], float]:
    """The fraction of samples the protocol gives each availability pattern (patterns with none left out), code order.

    Read off :func:`protocol_availability` itself, so the fractions are the ones the
    protocol's masks follow: ``rates`` HS 75 / LiDAR 75 gives complete 0.5 and each
    modality alone 0.25; ``none`` gives the complete pattern 1.0 (the scene's real
    availability is ANDed in by the caller, as for any simulated table).
    """
    table = protocol_availability(protocol, PATTERN_FRACTION_SAMPLES, modalities, seed=0)
    patterns, counts = np.unique(table, axis=0, return_counts=True)
    fractions = {tuple(bool(v) for v in row): int(n) / len(table) for row, n in zip(patterns, counts)}
    return dict(sorted(fractions.items(), key=lambda item: sum(1 << i for i, v in enumerate(item[0]) if v)))


__all__ = [
    "MAMOL_TABLE1_ROWS",
    "MMP_PROTOCOL_DROP",
    "PATTERN_FRACTION_SAMPLES",
    "ProtocolTable",
    "RatesRow",
    "Table1Row",
    "incomplete_patterns",
    "pattern_fractions",
    "load_protocol_table",
    "mamol_table3_rows",
    "mmp_mask",
    "protocol_availability",
    "save_protocol_table",
    "simulate_eta",
    "simulate_rates",
]
