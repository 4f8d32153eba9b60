"""Time the stages of ``pipeline.run`` from outside, without changing it.

``instrumented()`` wraps the stage functions that ``pipeline.run.run_scene``
looks up at call time (ingest, availability, the Dask client, mapping, the
exporters, the accuracy check) and records their wall time; the mapping's own
breakdown (plan = tiling and map-store creation, tiles = classification, mosaic
= moving the complete store into place) comes from ``MapResult.timings``. An
optional callback hears each stage start, so a parent process can attribute
memory peaks to stages.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any


@dataclass
class StageLog:
    seconds: dict[str, float] = field(default_factory=dict)
    map_results: list[Any] = field(default_factory=list)
    active: str | None = None  # the stage running now; a stage called inside another is not counted twice

    def add(self, stage: str, seconds: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds


def _timed(log: StageLog, stage: str, fn: Callable, on_enter: Callable[[str], None] | None, keep: bool = False,
           nested: bool = False) -> Callable:
    """``fn`` timed as ``stage``; when another stage is running it is part of that one, unless ``nested``."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if log.active is not None and not nested:
            return fn(*args, **kwargs)
        if on_enter:
            on_enter(stage)
        outer, started = log.active, time.perf_counter()
        log.active = stage
        try:
            result = fn(*args, **kwargs)
        finally:
            log.active = outer
            log.add(stage, time.perf_counter() - started)
        if keep:
            log.map_results.append(result)
        return result

    return wrapper


def _timed_context(log: StageLog, fn: Callable, on_enter: Callable[[str], None] | None) -> Callable:
    """A context-manager factory whose enter and exit are timed as the 'cluster' stage."""

    @functools.wraps(fn)
    @contextlib.contextmanager
    def wrapper(*args: Any, **kwargs: Any) -> Iterator[Any]:
        if on_enter:
            on_enter("cluster")
        started = time.perf_counter()
        with fn(*args, **kwargs) as value:
            log.add("cluster", time.perf_counter() - started)
            yield value
            stopping = time.perf_counter()
        log.add("cluster", time.perf_counter() - stopping)

    return wrapper


@contextlib.contextmanager
def instrumented(on_enter: Callable[[str], None] | None = None) -> Iterator[StageLog]:
    """Record stage times of every ``pipeline.run.run`` call made inside the block."""
    import pipeline.data.availability
    import pipeline.data.ingest
    import pipeline.inference.mapping
    import pipeline.outputs.cog
    import pipeline.run

    log = StageLog()
    targets: list[tuple[Any, str, Callable]] = [
        (pipeline.data.ingest, "ingest_scene", lambda f: _timed(log, "ingest", f, on_enter)),
        (pipeline.data.availability, "scene_availability", lambda f: _timed(log, "availability", f, None, nested=True)),
        (pipeline.run, "resolve_checkpoint", lambda f: _timed(log, "train", f, on_enter)),
        (pipeline.run, "dask_client", lambda f: _timed_context(log, f, on_enter)),
        (pipeline.inference.mapping, "map_scene", lambda f: _timed(log, "mapping", f, on_enter, keep=True)),
        (pipeline.run, "held_out_accuracy", lambda f: _timed(log, "accuracy", f, on_enter)),
    ]
    for name in ("write_class_cog", "write_confidence_cog", "write_pattern_cog", "write_quicklook"):
        targets.append((pipeline.outputs.cog, name, lambda f: _timed(log, "export", f, on_enter)))
    originals = [(module, name, getattr(module, name)) for module, name, _ in targets]
    try:
        for (module, name, wrap), (_, _, original) in zip(targets, originals):
            setattr(module, name, wrap(original))
        yield log
    finally:
        for module, name, original in originals:
            setattr(module, name, original)


def breakdown(log: StageLog, wall: float) -> dict[str, float]:
    """Seconds per stage of one run: ingest (without availability), availability, train, cluster start/stop,
    tiling, classification, mosaic, export, accuracy, and the rest (report, STAC, bookkeeping)."""
    s = log.seconds
    mapping = log.map_results[-1].timings if log.map_results else {}
    stages = {
        "ingest": s.get("ingest", 0.0) - s.get("availability", 0.0),
        "availability": s.get("availability", 0.0),
        "train": s.get("train", 0.0),
        "cluster": s.get("cluster", 0.0),
        "tiling": mapping.get("plan", 0.0),
        "classification": mapping.get("tiles", 0.0),
        "mosaic": mapping.get("mosaic", 0.0),
        "export": s.get("export", 0.0),
        "accuracy": s.get("accuracy", 0.0),
    }
    stages["other"] = wall - sum(stages.values())
    return {k: round(v, 3) for k, v in stages.items()}
