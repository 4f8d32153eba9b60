"""Errors a user can act on: each names the file, the key, what was expected and what was found.

They are raised where a problem is detected and caught once, at the command line,
to print the message and exit non-zero.
"""

from __future__ import annotations

from pathlib import Path

from upath import UPath

from pipeline.storage import as_location


class PipelineError(Exception):
    """Base of every error the pipeline reports to a user."""


class InputError(PipelineError):
    """A problem with an input: a file, a key inside it, a value."""

    def __init__(self, file: str | Path | UPath | None, key: str, expected: str, found: str = "") -> None:
        self.file = as_location(file) if file is not None else None  # a Path, or a URL (upath.UPath)
        self.key = key
        self.expected = expected
        self.found = found
        where = str(self.file) if self.file is not None else "(no file)"
        message = f"{where}: {key}: expected {expected}"
        if found:
            message += f", found {found}"
        super().__init__(message)

    def __reduce__(self) -> tuple[type, tuple]:
        """Pickle by the constructor's arguments, so the error crosses from a Dask worker to the client intact."""
        return type(self), (self.file, self.key, self.expected, self.found)


class CatalogError(InputError):
    """The catalog file is wrong: an unknown key, a bad value, a missing section."""


class SourceError(InputError):
    """A source raster cannot be read or does not match what the catalog declares."""


class AlignmentError(InputError):
    """Modalities cannot be put on one grid (no CRS, no overlap)."""


class CheckpointError(InputError):
    """A checkpoint is missing, corrupt, a pickle, or does not match the scene."""


class OutputError(InputError):
    """An output cannot be written (no space left, no permission); ``file`` names what was being written."""


class ClusterError(PipelineError):
    """The Dask cluster cannot run the work (scheduler unreachable, no GPU worker)."""
