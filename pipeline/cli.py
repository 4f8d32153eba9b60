"""What every ``python -m pipeline.<command>`` entry point shares: the error boundary and catalog opening.

Errors are raised where a problem is detected and caught once, here: an anticipated
failure (a :class:`~pipeline.config.errors.PipelineError`) prints one ``error:`` line
and exits 1; anything else prints its traceback and says it is a bug.
"""

from __future__ import annotations

import errno
import logging
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

from pipeline.config.catalog import Catalog, load_catalog
from pipeline.config.errors import PipelineError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130


def configure_logging(with_time: bool = False) -> None:
    """The log format of the command-line tools (INFO and up on stderr)."""
    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s" if with_time else "%(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=logging.INFO, format=fmt)


def open_catalog(path: str | Path) -> Catalog:
    """Read and validate a catalog, and generate the sources of scenes marked ``generate`` (the demo)."""
    from pipeline.datasets.demo import ensure_generated_sources

    catalog = load_catalog(path)
    ensure_generated_sources(catalog)
    return catalog


def failure_line(exc: BaseException) -> str | None:
    """The one ``error:`` line of an anticipated failure, or None for an unexpected one (a bug).

    Anticipated: the pipeline's typed errors; the checkpoint and weights errors of ``models``; and
    operating-system errors (no space left, no permission, a missing file), named by their file.
    """
    models = sys.modules.get("models")  # not imported: none of its errors can have been raised (and torch stays unloaded)
    model_errors: tuple[type[BaseException], ...] = () if models is None else (
        models.CheckpointFormatError, models.CheckpointMismatchError,
        models.PretrainedWeightsError, models.PretrainedWeightsNotFoundError)
    if isinstance(exc, (PipelineError, *model_errors)):
        return f"error: {exc}"
    if isinstance(exc, OSError) and (exc.filename is not None or exc.errno in _DISK_ERRNOS):
        where = f"{exc.filename}: " if exc.filename is not None else ""
        hint = _DISK_ERRNOS.get(exc.errno or 0, "")
        return f"error: {where}{exc.strerror or exc}{hint}"
    return None


_DISK_ERRNOS = {
    errno.ENOSPC: " (free some space or point output.folder / --output at another disk)",
    errno.EDQUOT: " (disk quota exceeded: free some space or point output.folder / --output elsewhere)",
    errno.EACCES: " (no permission: fix the folder's permissions or point output.folder / --output elsewhere)",
    errno.EROFS: " (read-only file system: point output.folder / --output elsewhere)",
}


def guarded(body: Callable[[], int], expected: tuple[type[BaseException], ...] = ()) -> int:
    """Run a command's body: anticipated failures become one ``error:`` line and exit status 1.

    ``expected`` adds exception types a command anticipates besides those of :func:`failure_line`
    (e.g. ``ValueError`` from parsing an option). Anything else prints its traceback and says it is
    a bug.
    """
    try:
        return body()
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - the one place a failure is reported
        line = failure_line(exc) or (f"error: {exc}" if isinstance(exc, expected) else None)
        if line is None:
            traceback.print_exc()
            line = "error: an unexpected failure (a bug in the pipeline): please report it with the traceback above"
        print(line, file=sys.stderr)
        return EXIT_FAILED
