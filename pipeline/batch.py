"""Scheduled jobs: ``python -m pipeline.batch CATALOG... [--output DIR] [--date YYYY-MM-DD] [--force]``.

For every scene of every catalog, one job maps the scene (as ``pipeline.run`` does) and writes its
exports into ``<output>/<scene>/<date>/``. Built for cron and systemd timers:

* idempotent: a scene whose catalog entry, model and training sections, input files and checkpoint
  are unchanged since its last successful job is skipped (``<output>/<scene>/.batch-state.json``
  records what that job saw and where its outputs went);
* one job per scene at a time: an exclusive, non-blocking lock on ``<output>/<scene>/.lock``; a
  scene whose lock is held by another job fails with "locked by another job";
* catalogs and ``--output`` may be URLs (``s3://...``). An object store has no locks: for a remote
  output the lock is a local file (in ``$MMLC_CACHE/locks/``, named by the scene folder's URL), so
  it keeps jobs of *one machine* apart; schedule a scene's jobs from one machine (one cron host).
  The state file and exports go to the object store; the JSON-lines log stays local (``--log``,
  else ``batch-log.jsonl`` in the current folder), as an object cannot be appended to;
* one failing scene (or catalog) does not stop the others;
* exit status 0 when every scene is done or skipped, 1 when any failed, 2 for bad usage;
* a JSON-lines log, ``<output>/batch-log.jsonl``: one line per scene per job.

Work shared between dates (scene store, checkpoints, map store) lives in ``<output>/_work/``, so a
new date with unchanged inputs reuses it (scene names cannot start with ``_``, so no scene clashes).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import pipeline
from pipeline.cli import configure_logging, failure_line, guarded
from pipeline.config.catalog import Catalog, Scene, load_catalog
from pipeline.files import write_json
from pipeline.locks import scene_lock
from pipeline.storage import Location, as_location, is_remote, is_url, local_copy, local_path

log = logging.getLogger(__name__)

WORK_FOLDER = "_work"
STATE_FILE = ".batch-state.json"
LOG_FILE = "batch-log.jsonl"

Status = Literal["done", "skipped", "failed"]


@dataclass
class SceneOutcome:
    """What one job did with one scene: a line of the JSON-lines log."""

    time: str
    catalog: str
    scene: str | None
    status: Status
    seconds: float
    outputs: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    date: str | None = None
    key: str | None = None


# --------------------------------------------------------------------------- idempotence


def scene_key(catalog: Catalog, scene: Scene) -> str:
    """sha256 of everything a scene's outputs depend on.

    The scene's catalog section and its input files (``pipeline.ingest.scene_content_hash``: section,
    tile size, files' size, mtime and content), the model and training sections, the output formats
    and the checkpoint's hash when the catalog names one. The catalog's name, description and cluster
    section do not change a map, so they are left out.
    """
    from models import checkpoint_hash
    from pipeline.data.ingest import scene_content_hash
    from pipeline.datasets.demo import ensure_demo_data

    ensure_demo_data(scene, catalog.path)  # a generated scene's files must exist before they are hashed
    checkpoint = catalog.model.checkpoint
    payload = {
        "scene": scene_content_hash(catalog, scene),
        "model": catalog.model.model_dump(mode="json"),
        "training": catalog.training.model_dump(mode="json"),
        "output": catalog.output.model_dump(mode="json", include={"formats", "tile_size", "batch_pixels"}),
        "checkpoint": checkpoint_hash(local_copy(checkpoint)) if checkpoint is not None and checkpoint.exists() else None,
        "pipeline_version": pipeline.__version__,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def read_state(scene_dir: Location) -> dict[str, Any] | None:
    """The state the last successful job of a scene left, or None (absent or unreadable)."""
    try:
        return json.loads((scene_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None


def is_up_to_date(state: dict[str, Any] | None, key: str, options: dict[str, Any] | None = None) -> bool:
    """True when the last successful job saw ``key`` and its outputs (paths or URLs) are all still there."""
    if not state or state.get("key") != key:
        return False
    return all(as_location(p, options).exists() for p in state.get("outputs", {}).values())


# --------------------------------------------------------------------------- locking and logging


def append_log(path: Path, outcome: SceneOutcome) -> None:
    """Append one JSON line; a single ``write`` on an O_APPEND file, so concurrent jobs do not interleave."""
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(asdict(outcome), sort_keys=True, default=str) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


# --------------------------------------------------------------------------- jobs


def work_catalog(catalog: Catalog, root: Location) -> Catalog:
    """A copy of ``catalog`` whose shared work (scene store, checkpoints, map store) goes to ``root/_work``."""
    copy = catalog.model_copy(deep=True)
    copy.output.folder = root / WORK_FOLDER
    copy.path = catalog.path
    return copy


def job_error(exc: Exception) -> str:
    """The log's line for a failed job: the error for an anticipated failure; the traceback too for a bug."""
    line = failure_line(exc)
    if line is not None:
        return f"{type(exc).__name__}: {line.removeprefix('error: ')}"
    log.error("unexpected failure (a bug in the pipeline: please report it with this traceback)", exc_info=exc)
    return f"{type(exc).__name__}: {exc} (unexpected: a bug in the pipeline, traceback in the log)"


def run_scene_job(catalog: Catalog, scene: Scene, root: Location, date: str, force: bool = False,
                  progress: bool = False) -> SceneOutcome:
    """Map one scene into ``root/<scene>/<date>/`` unless it is up to date; never raises for a scene's failure."""
    from pipeline.run import run_scene

    started = time.perf_counter()
    scene_dir = root / scene.name
    outcome = SceneOutcome(_now(), str(catalog.path), scene.name, "failed", 0.0, date=date)
    try:
        with scene_lock(scene_dir):
            key = scene_key(catalog, scene)
            outcome.key = key
            state = read_state(scene_dir)
            if not force and is_up_to_date(state, key, catalog.storage.fsspec_options()):
                assert state is not None
                outcome.status, outcome.outputs = "skipped", state["outputs"]
                outcome.date = state.get("date")
                log.info("scene %s unchanged since %s: skipped", scene.name, state.get("date"))
            else:
                export_dir = scene_dir / date
                result = run_scene(work_catalog(catalog, root), scene, progress=progress, export_dir=export_dir)
                outputs = {k: str(v) for k, v in result.outputs.items() if str(v).startswith(f"{export_dir}/")}
                write_json(scene_dir / STATE_FILE, {
                    "key": key, "date": date, "catalog": str(catalog.path), "finished": _now(), "outputs": outputs,
                })
                outcome.status, outcome.outputs = "done", outputs
                log.info("scene %s done: %s", scene.name, export_dir)
    except Exception as exc:  # one failing scene must not stop the others; the error goes to the log
        outcome.error = job_error(exc)
        log.error("scene %s failed: %s", scene.name, outcome.error)
    outcome.seconds = round(time.perf_counter() - started, 3)
    return outcome


def run_batch(catalog_paths: list[Path | str], output: Path | str | None = None, date: str | None = None,
              force: bool = False, progress: bool = False, log_file: Path | None = None) -> list[SceneOutcome]:
    """Run every scene of every catalog; returns one outcome per scene (or per catalog that fails to load).

    ``output`` replaces each catalog's ``output.folder`` as the root of the dated outputs, the state,
    locks and log; ``date`` (YYYY-MM-DD, default today) names the output folders. The log is
    ``log_file``, else ``<output>/batch-log.jsonl``, else ``batch-log.jsonl`` in each catalog's
    output folder; a catalog that cannot be read has no output folder, so without ``output`` or
    ``log_file`` its line goes to ``batch-log.jsonl`` in the current folder.
    """
    date = date or dt.date.today().isoformat()
    if log_file is None and output is not None and not is_url(output):
        log_file = Path(output) / LOG_FILE
    outcomes: list[SceneOutcome] = []
    for path in catalog_paths:
        started = time.perf_counter()
        try:
            catalog = load_catalog(path)
        except Exception as exc:  # a bad catalog is a failure of that catalog only
            outcome = SceneOutcome(_now(), str(path if is_url(path) else Path(path).resolve()), None, "failed",
                                   round(time.perf_counter() - started, 3), error=job_error(exc), date=date)
            log.error("catalog %s failed: %s", path, outcome.error)
            append_log(log_file or Path.cwd() / LOG_FILE, outcome)
            outcomes.append(outcome)
            continue
        if output is None:
            root = catalog.output.folder
        else:
            root = as_location(output, catalog.storage.fsspec_options())
            root = root if is_remote(root) else local_path(root).resolve()
        for scene in catalog.scenes:
            outcome = run_scene_job(catalog, scene, root, date, force, progress)
            append_log(log_file or (Path.cwd() if is_remote(root) else local_path(root)) / LOG_FILE, outcome)
            outcomes.append(outcome)
    return outcomes


def exit_status(outcomes: list[SceneOutcome]) -> int:
    """0 when every scene is done or skipped, 1 when any failed."""
    return 1 if any(o.status == "failed" for o in outcomes) else 0


def _date(text: str) -> str:
    try:
        return dt.date.fromisoformat(text).isoformat()
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date of the form YYYY-MM-DD") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.batch", description=__doc__.splitlines()[0],
                                     epilog="exit status: 0 all done or skipped, 1 some failed, 2 bad usage")
    parser.add_argument("catalogs", nargs="+", metavar="CATALOG", help="catalog files or URLs")
    parser.add_argument("--output", help="root of the outputs, a folder or a URL (default: each catalog's output.folder)")
    parser.add_argument("--date", type=_date, help="date naming the output folders (default: today)")
    parser.add_argument("--force", action="store_true", help="map every scene even when unchanged")
    parser.add_argument("--log", type=Path, help="JSON-lines log file (default: <output>/batch-log.jsonl)")
    parser.add_argument("--progress", action="store_true", help="show progress bars (off: logs suit cron)")
    args = parser.parse_args(argv)
    missing = [str(p) for p in args.catalogs if not is_url(p) and not Path(p).is_file()]  # a URL: checked when read
    if missing:
        parser.error(f"no such catalog file: {', '.join(missing)}")
    configure_logging(with_time=True)

    def body() -> int:
        outcomes = run_batch(args.catalogs, args.output, args.date, args.force, args.progress, args.log)
        for o in outcomes:
            print(f"{o.status:7s} {o.scene or '-'} ({o.catalog}) {o.seconds:.1f} s" + (f": {o.error}" if o.error else ""))
        return exit_status(outcomes)

    return guarded(body)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")
    sys.exit(main())
