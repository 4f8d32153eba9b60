"""What every ``python -m pipeline.<command>`` entry point shares: the error boundary and catalog opening.

Errors are raised where a problem is detected and caught once, here: an anticipated
failure (a :class:`~pipeline.config.errors.PipelineError`) prints one ``error:`` line
and exits 1; anything else prints its traceback and says it is a bug.
"""

from __future__ import annotations

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


def guarded(body: Callable[[], int], expected: tuple[type[BaseException], ...] = ()) -> int:
    """Run a command's body: anticipated failures become one ``error:`` line and exit status 1.

    ``expected`` adds exception types a command anticipates besides :class:`PipelineError`
    (e.g. ``ValueError`` from parsing an option).
    """
    try:
        return body()
    except (PipelineError, *expected) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception:  # noqa: BLE001 - the one place an unexpected error is reported
        traceback.print_exc()
        print("error: an unexpected failure (a bug in the pipeline): please report it with the traceback above",
              file=sys.stderr)
        return EXIT_FAILED
