"""The papers' protocols: ``python -m pipeline.evaluate CATALOG --methods a,b --protocol mamol-table1``.

For each setting of a protocol (train and test availability), each method and
each seed, a model is trained on the training pixels with the setting's
simulated availability, selected on validation pixels from the training pool,
and tested on held-out pixels with the setting's test availability. Results:
OA, AA, Cohen's kappa, per-class accuracy and confusion matrices, mean and
standard deviation over seeds, as Markdown, CSV and JSON, plus confusion PNGs.
Each run is also tested with every test pixel under every pattern of its row
(:mod:`pipeline.learn.pattern_sweep`), beside the row's one test mask, and its
OA averaged over the row's test masks (:mod:`pipeline.learn.mask_draws`).
"""

from __future__ import annotations

import csv
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.base import MissingModalityClassifier, freezes_backbone
from models.pretraining import init_from_pretrained
from models.registry import method_class
from pipeline.config.catalog import Catalog, Protocol
from pipeline.config.errors import CatalogError, InputError
from pipeline.config.params import check_dense_crops, check_model_params
from pipeline.data.patches import gather_patches
from pipeline.files import (
    atomic_file,
    write_text,
)
from pipeline.learn.breakdown import footprint_masks, grouped_summaries, pattern_groups
from pipeline.learn.dense_training import SceneArrays, fit_dense, predict_dense_at, scene_mask, trains_dense
from pipeline.learn.forest import fit_forest, forest_predict
from pipeline.learn.mask_draws import DEFAULT_MASK_DRAWS, MaskedPredictor, exact_mean, mask_seed, mean_over_masks
from pipeline.learn.metrics import classification_summary
from pipeline.learn.pattern_sweep import PatternPredictor, sweep_patterns
from pipeline.learn.protocols import (
    MAMOL_TABLE1_ROWS,
    mamol_table3_rows,
    pattern_fractions,
)
from pipeline.learn.training import (
    build_catalog_model,
    fit,
    predict,
    prepare_training_data,
    simulated_availability,
)

log = logging.getLogger(__name__)

FOREST = "random forest (floor)"
"""The label of the availability-blind per-pixel random forest every evaluation reports (``pipeline.learn.forest``)."""

REFERENCE = "baseline"
"""The method the others are measured against, seed by seed (the papers' plain ViT), when it was evaluated."""


@dataclass(frozen=True)
class Setting:
    """One row of a protocol: availability for training and for testing."""

    label: str
    train: Protocol
    test: Protocol


@dataclass(frozen=True)
class MethodVariant:
    """A method and hyper-parameter overrides, e.g. ``mamol:use_dynamic=false`` for an ablation."""

    label: str
    method: str
    params: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> MethodVariant:
        method, _, rest = text.partition(":")
        params: dict[str, Any] = {}
        for item in filter(None, rest.split(";")):
            key, _, value = item.partition("=")
            params[key] = parse_value(value) if value else True
        return cls(label=text, method=method, params=params)


def check_variant(variant: MethodVariant, catalog: Catalog) -> None:
    """Refuse, before any training, a variant the catalog's own check would refuse (method, keys, values, crops).

    Raises ``ValueError`` naming the variant and the key: ``mamol:window_size=3`` is refused
    here, not after the scene is read and the other variants are trained.
    """
    params = {**catalog.model.params, **variant.params}
    dense = catalog.training.dense
    try:
        check_model_params(variant.method, params, None)
        check_dense_crops(variant.method, params, dense.crop_size, dense.context, None)
    except CatalogError as exc:
        key = exc.key.replace("model.method", "method")
        found = f", found {exc.found}" if exc.found else ""
        raise ValueError(f"method {variant.label!r}: {key}: expected {exc.expected}{found}") from None


def parse_value(text: str) -> Any:
    """A variant's parameter value: JSON (``false``, ``4``, ``[1, 2]``), else the text itself (``pixel``)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _rates(rates: dict[str, float]) -> Protocol:
    return Protocol(kind="rates", rates=rates)


def protocol_settings(name: str, modalities: list[str], training: Protocol | None = None) -> list[Setting]:
    """The rows of a named protocol for a dataset's modalities.

    ``scene``: one row, trained with ``training`` (the catalog's protocol), tested
    on the scene's real availability (its clouds and failures): what a user's map gets.
    """
    if name == "scene":
        return [Setting("catalog's training protocol, tested as the scene is", training or Protocol(kind="none"), Protocol(kind="none"))]
    if name == "mamol-table1":
        if len(modalities) != 2:
            raise ValueError(f"mamol-table1 is defined for two modalities, the scene has {modalities}")
        return [Setting(r.row(modalities).label, _rates(r.rates(modalities)), _rates(r.rates(modalities))) for r in MAMOL_TABLE1_ROWS]
    if name == "mamol-table3":
        return [Setting(r.label, _rates(r.rates), _rates(r.rates)) for r in mamol_table3_rows(modalities)]
    if name == "mamol-table5":
        row = MAMOL_TABLE1_ROWS[5].row(modalities) if len(modalities) == 2 else mamol_table3_rows(modalities)[0]
        return [Setting(row.label, _rates(row.rates), _rates(row.rates))]
    if name == "lvpcnet-table1":
        complete = Protocol(kind="none")
        rows = [Setting("trained complete, tested complete", complete, complete)]
        for _i, m in enumerate(modalities):
            test = _rates({n: (0.0 if n == m else 1.0) for n in modalities})
            rows.append(Setting(f"trained complete, tested without {m}", complete, test))
        return rows
    raise ValueError(f"unknown protocol {name!r}; expected scene, mamol-table1, mamol-table3, mamol-table5 or lvpcnet-table1")


def default_methods(protocol: str, catalog: Catalog) -> list[str]:
    if protocol == "scene":
        return [catalog.model.method]
    if protocol == "mamol-table5":
        return ["mamol", "mamol:use_dynamic=false", "mamol:use_static=false", "mamol:use_modality_experts=false"]
    return [REFERENCE, catalog.model.method] if catalog.model.method != REFERENCE else [REFERENCE]


INFERENCE_CHOICES = ("auto", "dense", "patch", "both")


def variant_frozen(catalog: Catalog, variant: MethodVariant) -> bool:
    """Whether ``variant`` trains with its backbone frozen under ``catalog``: the rule its model applies when built."""
    return freezes_backbone(catalog.model.backbone_pretrained,
                            {**catalog.model.params, **variant.params}.get("freeze_backbone"))


def variant_paths(variant: MethodVariant, inference: str, *, frozen: bool) -> list[str]:
    """The paths (``patch``, ``dense``) a variant is trained and tested on.

    They follow training (``trains_dense``): ``dense`` is dense for a method with
    the dense path, ``auto`` for a method that is dense by default (or, with its
    backbone ``frozen``, dense by default when frozen), ``patch`` is patch; ``both``
    runs a dense-capable method twice, side by side on the same split, masks and seed.
    """
    if inference not in INFERENCE_CHOICES:
        raise ValueError(f"inference must be one of {INFERENCE_CHOICES}, got {inference!r}")
    cls = method_class(variant.method)
    if inference == "both":
        return ["patch", "dense"] if cls.supports_dense else ["patch"]
    return ["dense"] if trains_dense(inference, cls, frozen=frozen) else ["patch"]


def path_variant(variant: MethodVariant, path: str) -> MethodVariant:
    """``variant`` labelled with its path when dense (``mamol [dense]``); patch runs keep the plain label."""
    return variant if path == "patch" else MethodVariant(f"{variant.label} [dense]", variant.method, variant.params)


def stratified_subset(targets: np.ndarray, limit: int | None, seed: int) -> np.ndarray:
    """Indices of at most ``limit`` samples, keeping class proportions (all when ``limit`` is None)."""
    if limit is None or len(targets) <= limit:
        return np.arange(len(targets))
    rng = np.random.default_rng(seed)
    keep = []
    for k in np.unique(targets):
        idx = np.flatnonzero(targets == k)
        n = max(1, int(round(limit * len(idx) / len(targets))))
        keep.append(rng.choice(idx, size=min(n, len(idx)), replace=False))
    return np.sort(np.concatenate(keep))


def evaluate(
    catalog: Catalog,
    protocol: str,
    methods: list[str],
    seeds: list[int],
    output: Path,
    scene_name: str | None = None,
    max_test_pixels: int | None = None,
    progress: bool = True,
    rows: list[int] | None = None,
    inference: str | None = None,
    data_seed: int | None = None,
    pattern_sweep: bool = True,
    mask_draws: int = DEFAULT_MASK_DRAWS,
) -> dict[str, Any]:
    """Run a protocol (or only its ``rows``, 0-based) and write its tables under ``output``; returns the results.

    ``inference`` (default: the catalog's ``model.inference``) is ``auto``,
    ``dense``, ``patch`` or ``both``; see :func:`variant_paths`. ``data_seed``
    holds the split, the test pixels and the test mask at that seed, so the
    ``seeds`` vary only the training (initialisation, batches, training masks):
    the spread over seeds is then the training's alone. ``pattern_sweep`` also tests every
    test pixel under every pattern of the row (:mod:`pipeline.learn.pattern_sweep`; a run's
    ``every_pattern``). ``mask_draws`` test masks score a dense run (its ``mask_mean``: the
    row's OA with the mask's draw averaged out; the patch path and the floor take the exact
    mean from the sweep, :mod:`pipeline.learn.mask_draws`).
    """
    scene = catalog.scene(scene_name)
    assert scene.labels is not None
    names = [c.name for c in scene.labels.classes]
    parsed = [MethodVariant.parse(m) for m in methods]
    for variant in parsed:
        check_variant(variant, catalog)
    runs_of = [(v, path) for v in parsed
               for path in variant_paths(v, inference or catalog.model.inference, frozen=variant_frozen(catalog, v))]
    variants = [path_variant(v, path) for v, path in runs_of]
    settings = protocol_settings(protocol, scene.modality_names, catalog.training.protocol)
    if rows is not None:
        bad = [r for r in rows if not 0 <= r < len(settings)]
        if bad:
            raise ValueError(f"rows {bad} are not rows of {protocol} (0..{len(settings) - 1})")
        settings = [settings[r] for r in rows]
    protocol_rows = rows if rows is not None else list(range(len(settings)))
    output.mkdir(parents=True, exist_ok=True)
    runs: list[dict[str, Any]] = []
    started = time.perf_counter()
    footprints: dict[str, np.ndarray] | None = None
    for seed in seeds:
        drawn = seed if data_seed is None else data_seed  # what the data draws (split, test pixels, test mask) follow
        data = prepare_training_data(catalog, scene, drawn)
        split = data.split
        if footprints is None:
            footprints = footprint_masks(scene, data.ds["labels"] if "labels" in data.ds else data.ds["available"], catalog.path)
        test_idx = stratified_subset(split.test_targets, max_test_pixels, drawn)
        test_rows, test_cols = split.test_rows[test_idx], split.test_cols[test_idx]
        test_p, test_real = gather_patches(
            data.ds, data.modalities, test_rows, test_cols, data.config.patch_size, data.stats, catalog.output.tile_size,
        )
        test_targets = split.test_targets[test_idx]
        test_footprints = {k: m[test_rows, test_cols] for k, m in footprints.items()}
        scene_arrays: SceneArrays | None = None
        for s_i, setting in enumerate(settings):
            train_avail = simulated_availability(setting.train, data.train_real, data.modalities, seed)
            val_avail = simulated_availability(setting.train, data.val_real, data.modalities, seed + 1)
            draw_mask = _row_masks(setting.test, (data.ds.sizes["y"], data.ds.sizes["x"]), data.modalities, drawn)
            mask = draw_mask(0)
            fractions = pattern_fractions(setting.test, data.modalities)
            test_avail = mask[:, test_rows, test_cols].T & test_real
            testable = test_avail.any(axis=1)
            test_in = {m: v[testable] for m, v in test_p.items()}
            truth = test_targets[testable]
            groups = {"patterns": pattern_groups(test_avail[testable], data.modalities),
                      "footprints": {k: m[testable] for k, m in test_footprints.items()}}

            context = {"setting": setting.label, "row": protocol_rows[s_i], "seed": seed, "data_seed": drawn,
                       "test_pixels_without_any_modality": int((~testable).sum())}
            t0 = time.perf_counter()
            forest = fit_forest(data.train_patches, train_avail, split.train_targets, data.modalities, seed)
            predicted = forest_predict(forest, test_in, test_avail[testable], data.modalities)
            seconds = time.perf_counter() - t0
            sweep = {"every_pattern": sweep_patterns(test_targets, test_real, fractions,
                                                     _forest_predictor(forest, test_p, data.modalities), data.modalities,
                                                     names)} if pattern_sweep else {}
            runs.append(run_summary(truth, predicted, names, groups, method=FOREST, epochs=0, seconds=seconds,
                                    **sweep, **_mask_mean(sweep), **context))
            for (variant, path), label in zip(runs_of, (v.label for v in variants)):
                config = data.config
                config = type(config).from_dict({**config.to_dict(), "method": variant.method, "params": {**config.params, **variant.params}})
                torch.manual_seed(seed)
                model = build_catalog_model(config, catalog.path)
                init_from_pretrained(model)
                t0 = time.perf_counter()
                if path == "dense":
                    history = fit_dense(model, data.ds, data.stats, split, catalog.training, setting.train, seed, progress,
                                        catalog.model.precision)
                    if scene_arrays is None or scene_arrays.pad < model.receptive_radius:
                        scene_arrays = SceneArrays.read(data.ds, data.modalities, data.stats, model.receptive_radius)
                    probs = predict_dense_at(model, scene_arrays.masked(mask), test_rows[testable], test_cols[testable],
                                             precision=catalog.model.precision)
                    seconds = time.perf_counter() - t0
                    predictor = _dense_predictor(model, scene_arrays, test_rows, test_cols, catalog.model.precision)
                    over_masks: dict[str, Any] | None = {"mask_mean": mean_over_masks(
                        test_targets, test_rows, test_cols, test_real, draw_mask,
                        _masked_dense_predictor(model, scene_arrays, test_rows, test_cols, catalog.model.precision),
                        mask_draws if len(fractions) > 1 else 1,  # one pattern: every draw is the same mask
                        first_oa=float((probs.argmax(1) == truth).mean()))} if mask_draws else {}
                else:
                    history = fit(model, data.train_patches, train_avail, split.train_targets, data.val_patches, val_avail,
                                  split.val_targets, catalog.training, seed, progress,
                                  precision=catalog.model.precision, protocol=setting.train, train_real=data.train_real)
                    probs = predict(model, test_in, test_avail[testable], precision=catalog.model.precision)
                    seconds = time.perf_counter() - t0
                    predictor = _patch_predictor(model, test_p, catalog.model.precision)
                    over_masks = None  # exact, from the sweep
                sweep = {"every_pattern": sweep_patterns(test_targets, test_real, fractions, predictor, data.modalities,
                                                         names)} if pattern_sweep else {}
                runs.append(run_summary(truth, probs.argmax(1), names, groups, method=label, epochs=len(history),
                                        seconds=seconds, **sweep, **(_mask_mean(sweep) if over_masks is None else over_masks), **context))
    variants = [*variants, MethodVariant(label=FOREST, method="forest")]
    results = {
        "catalog": str(catalog.path), "scene": scene.name, "protocol": protocol, "methods": [v.label for v in variants],
        "seeds": seeds, "data_seed": data_seed, "settings": [s.label for s in settings], "classes": names, "max_test_pixels": max_test_pixels,
        "seconds": time.perf_counter() - started,
        # what the runs were trained with, so a table can be read after its catalog has changed
        "training": catalog.training.model_dump(mode="json"), "model": catalog.model.model_dump(mode="json"),
        "runs": runs, "table": aggregate(runs, [s.label for s in settings], [v.label for v in variants]),
    }
    write_tables(results, output)
    return results


def _take(patches: dict[str, np.ndarray], keep: np.ndarray) -> dict[str, np.ndarray]:
    return {m: v[keep] for m, v in patches.items()}


def _forest_predictor(forest: Any, patches: dict[str, np.ndarray], modalities: list[str]) -> PatternPredictor:
    return lambda _pattern, available, keep: forest_predict(forest, _take(patches, keep), available, modalities)


def _patch_predictor(model: MissingModalityClassifier, patches: dict[str, np.ndarray], precision: str) -> PatternPredictor:
    return lambda _pattern, available, keep: predict(model, _take(patches, keep), available, precision=precision).argmax(1)


def _dense_predictor(model: MissingModalityClassifier, scene: SceneArrays, rows: np.ndarray, cols: np.ndarray, precision: str) -> PatternPredictor:
    """The pattern over the whole scene (each pixel classified as inside a large region of it), ANDed with the real availability."""
    def classify(pattern: tuple[bool, ...], _available: np.ndarray, keep: np.ndarray) -> np.ndarray:
        mask = np.broadcast_to(np.asarray(pattern, dtype=bool)[:, None, None], (len(pattern), scene.height, scene.width))
        return predict_dense_at(model, scene.masked(mask), rows[keep], cols[keep], precision=precision).argmax(1)
    return classify


def _row_masks(test: Protocol, shape: tuple[int, int], modalities: list[str], data_seed: int) -> Callable[[int], np.ndarray]:
    """The row's k-th test mask over the scene (draw 0 is the one its tables and breakdowns use)."""
    return lambda k: scene_mask(test, shape, modalities, mask_seed(data_seed, k))


def _masked_dense_predictor(model: MissingModalityClassifier, scene: SceneArrays, rows: np.ndarray, cols: np.ndarray,
                            precision: str) -> MaskedPredictor:
    return lambda mask, keep: predict_dense_at(model, scene.masked(mask), rows[keep], cols[keep], precision=precision).argmax(1)


def _mask_mean(sweep: dict[str, Any]) -> dict[str, Any]:
    exact = exact_mean(sweep.get("every_pattern"))
    return {} if exact is None else {"mask_mean": exact}


def run_summary(
    truth: np.ndarray, predicted: np.ndarray, names: list[str], groups: dict[str, dict[str, np.ndarray]], **fields: Any
) -> dict[str, Any]:
    """One run's metrics: overall, and per group of every kind (``patterns``, ``footprints``), with ``fields``.

    ``fields`` may hold ``every_pattern``, the sweep of :func:`pipeline.learn.pattern_sweep.sweep_patterns`, and
    ``mask_mean``, the OA over the row's test masks (:mod:`pipeline.learn.mask_draws`).
    """
    summary = classification_summary(truth, predicted, len(names), names)
    summary.update(fields)
    summary.update({kind: grouped_summaries(truth, predicted, members, names) for kind, members in groups.items()})
    swept = (fields.get("every_pattern") or {}).get("oa")
    drawn = (fields.get("mask_mean") or {}).get("draws")
    log.info("%s | %s | seed %d: OA %.4f AA %.4f kappa %.4f%s%s", fields.get("setting"), fields.get("method"), fields.get("seed"),
             summary["oa"], summary["aa"], summary["kappa"], "" if swept is None else f" | every pattern: OA {swept:.4f}",
             "" if not drawn else f" | over {drawn} test masks: OA {fields['mask_mean']['oa']:.4f}")
    return summary


GROUP_KINDS = ("patterns", "footprints")


def seed_std(values: np.ndarray) -> float | None:
    """The sample standard deviation over seeds (ddof 1, as ``torch.std``); 0 for one seed, None for none."""
    if not values.size:
        return None
    return float(values.std(ddof=1)) if values.size > 1 else 0.0


def aggregate(runs: list[dict[str, Any]], settings: list[str], methods: list[str]) -> list[dict[str, Any]]:
    """Mean and standard deviation over seeds, one entry per (setting, method), in the order of the labels given."""
    table = []
    for setting in settings:
        for method in methods:
            rows = [r for r in runs if r["setting"] == setting and r["method"] == method]
            if not rows:
                continue
            entry: dict[str, Any] = {"setting": setting, "method": method, "seeds": len(rows)}
            for metric in ("oa", "aa", "kappa"):
                vals = np.array([r[metric] for r in rows if r[metric] is not None], dtype=float)
                entry[f"{metric}_mean"] = float(vals.mean()) if vals.size else None
                entry[f"{metric}_std"] = seed_std(vals)
            oas = np.array([r["oa"] for r in rows if r["oa"] is not None], dtype=float)
            entry["oa_spread"] = float(oas.max() - oas.min()) if oas.size else None
            entry["confusion"] = np.sum([np.asarray(r["confusion"]) for r in rows], axis=0).tolist()
            for kind in GROUP_KINDS:
                names = list(dict.fromkeys(g for r in rows for g in r.get(kind, {})))
                entry[kind] = {}
                for g in names:
                    oas = np.array([r[kind][g]["oa"] for r in rows if g in r.get(kind, {}) and r[kind][g]["oa"] is not None])
                    pixels = [r[kind][g]["n"] for r in rows if g in r.get(kind, {})]
                    entry[kind][g] = {"oa_mean": float(oas.mean()) if oas.size else None,
                                      "oa_std": seed_std(oas), "seeds": int(oas.size),
                                      "pixels_mean": float(np.mean(pixels))}
            entry["every_pattern"] = every_pattern_entry(rows)
            entry["mask_mean"] = over_seeds([r["mask_mean"]["oa"] for r in rows if (r.get("mask_mean") or {}).get("oa") is not None])
            table.append(entry)
    return table


def over_seeds(values: list[float]) -> dict[str, Any]:
    """``seeds``, ``oa_mean``, ``oa_std`` and ``oa_spread`` (max − min) of one OA a seed (None where there is none)."""
    oas = np.array(values, dtype=float)
    return {"seeds": int(oas.size), "oa_mean": float(oas.mean()) if oas.size else None, "oa_std": seed_std(oas),
            "oa_spread": float(oas.max() - oas.min()) if oas.size else None}


def every_pattern_entry(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean, std and spread over seeds of the runs' every-pattern OA, and each pattern's OA (runs without it left out)."""
    swept = [r["every_pattern"] for r in rows if (r.get("every_pattern") or {}).get("oa") is not None]
    entry: dict[str, Any] = {**over_seeds([s["oa"] for s in swept]), "patterns": {}}
    for label in dict.fromkeys(g for s in swept for g in s["patterns"]):
        cells = [s["patterns"][label] for s in swept if label in s["patterns"]]
        values = np.array([c["oa"] for c in cells], dtype=float)
        entry["patterns"][label] = {"oa_mean": float(values.mean()), "oa_std": seed_std(values), "seeds": int(values.size),
                                    "pixels_mean": float(np.mean([c["n"] for c in cells])), "weight": cells[0]["weight"]}
    return entry


MERGED_KEYS = ("scene", "protocol", "classes", "max_test_pixels", "data_seed")


def read_results(path: Path) -> dict[str, Any]:
    """An evaluation's ``results.json`` (``path`` is the file or its folder)."""
    file = path if path.suffix == ".json" else path / "results.json"
    try:
        results = json.loads(file.read_text())
    except FileNotFoundError:
        raise InputError(file, "results.json", "the results of python -m pipeline.evaluate ... --output DIR", "no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(file, "results.json", "JSON written by python -m pipeline.evaluate", str(exc)) from None
    missing = [k for k in ("runs", "methods", "scene", "protocol", "classes") if k not in results]  # data_seed came later
    if missing:
        raise InputError(file, missing[0], "a key of an evaluation's results", "none")
    return results


def merge_results(parts: dict[Path, dict[str, Any]]) -> dict[str, Any]:
    """One evaluation from several run apart (seeds or rows split over jobs or machines), re-aggregated.

    ``parts`` maps each ``results.json`` to its content. They must share the
    scene, protocol, classes and test-pixel cap (else an ``InputError`` names the
    file and the key); a (setting, method, seed) run found in two parts must have
    the same OA and is kept once. Settings follow the protocol's row order
    (first appearance for results written before rows were recorded), methods
    their first appearance. The catalog's ``training`` and ``model`` sections the
    runs were made with are kept where every part agrees, else ``None``.
    """
    if not parts:
        raise ValueError("nothing to merge: give at least one results.json")
    (first_path, first), *others = parts.items()
    for path, part in others:
        for name in MERGED_KEYS:
            if part.get(name) != first.get(name):
                raise InputError(path, name, f"{first.get(name)!r} as in {first_path}", repr(part.get(name)))
    runs: dict[tuple[str, str, int], dict[str, Any]] = {}
    for path, part in parts.items():
        for run in part["runs"]:
            key = (run["setting"], run["method"], run["seed"])
            if key in runs and runs[key]["oa"] != run["oa"]:
                where = f"runs[setting={key[0]!r}, method={key[1]!r}, seed={key[2]}].oa"
                raise InputError(path, where, f"{runs[key]['oa']} as in an earlier part (the same run twice)",
                                 str(run["oa"]))
            runs.setdefault(key, run)
    merged = list(runs.values())
    order = {run["setting"]: (run.get("row", len(merged)), i) for i, run in reversed(list(enumerate(merged)))}
    settings = sorted(order, key=order.__getitem__)
    methods = list(dict.fromkeys(m for part in parts.values() for m in part["methods"]))
    if FOREST in methods:  # the floor stays last, as evaluate writes it
        methods = [m for m in methods if m != FOREST] + [FOREST]
    seeds = sorted({run["seed"] for run in merged})
    # the training and model sections where every part had the same (else None: each part's file says its own)
    shared = {name: first.get(name) if all(part.get(name) == first.get(name) for part in parts.values()) else None
              for name in ("training", "model")}
    return {**{name: first.get(name) for name in ("catalog", *MERGED_KEYS)}, **shared, "methods": methods, "seeds": seeds,
            "settings": settings, "seconds": float(sum(part.get("seconds", 0.0) for part in parts.values())),
            "merged_from": [str(p) for p in parts], "runs": merged, "table": aggregate(merged, settings, methods)}


def paired_gap(runs: list[dict[str, Any]], setting: str, method: str, other: str) -> tuple[float | None, int]:
    """Mean OA of ``method`` minus ``other`` over the seeds both ran in ``setting``, and how many seeds that is.

    Paired: one seed gives both the same split, test pixels and test masks, so
    the difference is free of the data's share of the seed spread.
    """
    oa = {(r["method"], r["seed"]): r["oa"] for r in runs if r["setting"] == setting and r["oa"] is not None}
    seeds = sorted({s for m, s in oa if m == method} & {s for m, s in oa if m == other})
    if not seeds:
        return None, 0
    return float(np.mean([oa[(method, s)] - oa[(other, s)] for s in seeds])), len(seeds)


def spread_and_gap_table(results: dict[str, Any]) -> list[str]:
    """Markdown lines: each method's OA spread over seeds, and its paired gap to the reference method and the floor."""
    methods = results["methods"]
    against = [m for m in (REFERENCE, FOREST) if m in methods]
    lines = ["## Seed spread and paired gaps (OA points)", "",
             "Spread: max − min of OA over the seeds, under the row's test mask, with the OA averaged over the row's test "
             "masks (the mask's own draw left out: exact on the patch path and for the floor, over draws on the dense "
             "path) and with every test pixel under every pattern of the row (the table below). Gaps: mean OA "
             "difference over the seeds both ran (one seed gives both the same split, test pixels and masks).", "",
             "| Setting | Method | seeds | OA spread | OA over test masks | its spread | OA spread, every pattern | "
             + " | ".join(f"− {m}" for m in against) + " |",
             "|---|---|---|---|---|---|---|" + "---|" * len(against)]
    for e in results["table"]:
        swept = e.get("every_pattern") or {}
        masks = e.get("mask_mean") or {}
        cells = [e["setting"], e["method"], str(e["seeds"]), _spread_cell(e.get("oa_spread"), e["seeds"]),
                 "n/a" if masks.get("oa_mean") is None else _mean_std(masks["oa_mean"], masks["oa_std"], masks["seeds"]),
                 _spread_cell(masks.get("oa_spread"), masks.get("seeds", 0)),
                 _spread_cell(swept.get("oa_spread"), swept.get("seeds", 0))]
        for other in against:
            gap, n = paired_gap(results["runs"], e["setting"], e["method"], other) if other != e["method"] else (None, 0)
            cells.append("" if other == e["method"] else "n/a" if gap is None
                         else f"{100 * gap:+.2f}" + (f" (n={n})" if n < e["seeds"] else ""))
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, ""]


def _spread_cell(spread: float | None, seeds: int) -> str:
    return "n/a" if spread is None else "–" if seeds < 2 else f"{100 * spread:.2f}"


def _cell(entry: dict[str, Any], metric: str, seeds: int) -> str:
    """``mean ± std`` over the entry's seeds, with their count when fewer than the table's ``seeds`` (a merged table)."""
    mean, std = entry[f"{metric}_mean"], entry[f"{metric}_std"]
    if mean is None:
        return "n/a"
    text = f"{100 * mean:.2f} ± {100 * std:.2f}" if entry["seeds"] > 1 else f"{100 * mean:.2f}"
    return text + (f" (n={entry['seeds']})" if entry["seeds"] < seeds else "")


def write_tables(results: dict[str, Any], output: Path) -> dict[str, Path]:
    """Markdown (the papers' layout: a row per setting, OA/AA/kappa per method), CSV, JSON and confusion PNGs."""
    table = results["table"]
    methods = results["methods"]
    header = ["Setting"] + [f"{m} {metric}" for m in methods for metric in ("OA", "AA", "κ")]
    lines = [f"# {results['protocol']} on {results['scene']} (seeds {results['seeds']}; %, mean ± sample std over seeds)", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for setting in results["settings"]:
        cells = [setting]
        for m in methods:
            entry = next((e for e in table if e["setting"] == setting and e["method"] == m), None)
            cells += [_cell(entry, k, len(results["seeds"])) if entry else "n/a" for k in ("oa", "aa", "kappa")]
        lines.append("| " + " | ".join(cells) + " |")
    means = []
    for m in methods:
        oas = [e["oa_mean"] for e in table if e["method"] == m and e["oa_mean"] is not None]
        means.append(f"{m}: mean OA over settings {100 * np.mean(oas):.2f}%" if oas else f"{m}: n/a")
    lines += ["", "; ".join(means), ""]
    lines += spread_and_gap_table(results)
    lines += availability_tables(results)
    paths = {"markdown": output / "table.md", "csv": output / "table.csv", "json": output / "results.json"}
    write_text(paths["markdown"], "\n".join(lines))
    with atomic_file(paths["csv"]) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["setting", "method", "seeds", "oa_mean", "oa_std", "oa_spread", "aa_mean", "aa_std", "kappa_mean", "kappa_std",
                         "every_pattern_oa_mean", "every_pattern_oa_std", "every_pattern_oa_spread",
                         "mask_mean_oa_mean", "mask_mean_oa_std", "mask_mean_oa_spread"])
        for e in table:
            swept, masks = e.get("every_pattern") or {}, e.get("mask_mean") or {}
            writer.writerow([e["setting"], e["method"], e["seeds"], e["oa_mean"], e["oa_std"], e.get("oa_spread"), e["aa_mean"],
                             e["aa_std"], e["kappa_mean"], e["kappa_std"], swept.get("oa_mean"), swept.get("oa_std"),
                             swept.get("oa_spread"), masks.get("oa_mean"), masks.get("oa_std"), masks.get("oa_spread")])
    write_text(paths["json"], json.dumps(results, indent=1, default=float))
    paths.update(write_confusion_pngs(results, output))
    return paths


def availability_tables(results: dict[str, Any]) -> list[str]:
    """Markdown lines: OA (mean ± std over seeds) per availability pattern and per footprint, a table per kind."""
    lines: list[str] = []
    for kind, title in (("patterns", "availability pattern of the test pixel"), ("footprints", "footprint of the catalog's clouds and failures")):
        groups = list(dict.fromkeys(g for e in results["table"] for g in e.get(kind, {})))
        if not groups:
            continue
        lines += [f"## OA by {title} (%, mean ± sample std over seeds; test pixels per seed in brackets)", "",
                  "| Setting | Method | " + " | ".join(groups) + " |", "|---|---|" + "---|" * len(groups)]
        for e in results["table"]:
            cells = []
            for g in groups:
                cell = e.get(kind, {}).get(g)
                if cell is None or cell["oa_mean"] is None:
                    cells.append("n/a")
                    continue
                spread = f" ± {100 * cell['oa_std']:.2f}" if cell["seeds"] > 1 else ""
                cells.append(f"{100 * cell['oa_mean']:.2f}{spread} [{cell['pixels_mean']:.0f}]")
            lines.append(f"| {e['setting']} | {e['method']} | " + " | ".join(cells) + " |")
        lines.append("")
    return [*lines, *every_pattern_table(results)]


def every_pattern_table(results: dict[str, Any]) -> list[str]:
    """Markdown lines: OA with every test pixel under each pattern of its row, and the row's expected OA (none if no run has it)."""
    entries = [e for e in results["table"] if (e.get("every_pattern") or {}).get("seeds")]
    if not entries:
        return []
    groups = list(dict.fromkeys(g for e in entries for g in e["every_pattern"]["patterns"]))
    lines = ["## OA with every test pixel under every pattern of the row (%, mean ± sample std over seeds)", "",
             "Each of the row's patterns is tested on every test pixel it leaves a modality (the count in brackets), ANDed "
             "with what the pixel really has (under the row's clear, a pixel beneath a cloud keeps what the cloud leaves); the row's OA "
             "weighs the patterns by the row's fractions (w) and their pixels. On the patch path that is the mean of the test "
             "mask's OA over its draws; on the dense path each pattern covers the whole scene, so it is the row's OA under "
             "large regions of each pattern (the mask's small regions let neighbours lend a missing modality).", "",
             "| Setting | Method | row OA | " + " | ".join(f"row's {g}" for g in groups) + " |", "|---|---|---|" + "---|" * len(groups)]
    for e in entries:
        swept = e["every_pattern"]
        cells = [_mean_std(swept["oa_mean"], swept["oa_std"], swept["seeds"])]
        for g in groups:
            cell = swept["patterns"].get(g)
            cells.append("n/a" if cell is None else
                         f"{_mean_std(cell['oa_mean'], cell['oa_std'], cell['seeds'])} [{cell['pixels_mean']:.0f}; w {cell['weight']:.2f}]")
        lines.append(f"| {e['setting']} | {e['method']} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _mean_std(mean: float, std: float | None, seeds: int) -> str:
    return f"{100 * mean:.2f}" + (f" ± {100 * std:.2f}" if seeds > 1 and std is not None else "")


def write_confusion_pngs(results: dict[str, Any], output: Path) -> dict[str, Path]:
    from matplotlib.figure import (
        Figure,  # no pyplot: never switches a notebook's backend
    )

    names = results["classes"]
    out = {}
    for m_i, method in enumerate(results["methods"]):
        entries = [e for e in results["table"] if e["method"] == method]
        if not entries:
            continue
        cols = min(3, len(entries))
        rows = int(np.ceil(len(entries) / cols))
        fig = Figure(figsize=(4.2 * cols, 4.0 * rows))
        axes = fig.subplots(rows, cols, squeeze=False)
        for ax, e in zip(axes.flat, entries):
            cm = np.asarray(e["confusion"], dtype=float)
            norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
            ax.imshow(norm, vmin=0, vmax=1, cmap="Blues")
            ax.set_title(e["setting"], fontsize=8)
            ax.set_xticks(range(len(names)), [n[:10] for n in names], rotation=90, fontsize=6)
            ax.set_yticks(range(len(names)), [n[:10] for n in names], fontsize=6)
        for ax in list(axes.flat)[len(entries):]:
            ax.axis("off")
        fig.suptitle(f"{method}: confusion (rows true, row-normalised)")
        fig.tight_layout()
        safe = "".join(ch if ch.isalnum() else "_" for ch in method)
        path = output / f"confusion_{m_i}_{safe}.png"
        fig.savefig(path, dpi=90)
        out[f"confusion_{method}"] = path
    return out
