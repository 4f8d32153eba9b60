"""Atomic writes: a file or a directory appears complete under its name, or not at all.

One rule, used everywhere the pipeline writes an output: write under a temporary
name beside the target (same folder, so the same filesystem), then move it into
place with :func:`os.replace`. Temporary names start with ``.<name>.tmp-`` so that
:func:`remove_stale_temporaries` can clean what a killed run left behind.

The same helpers take a remote location (a URL, see :mod:`pipeline.storage`): a file
is written to a local temporary and uploaded in one PUT (an object appears whole or
not at all); a directory is filled locally and uploaded, or (:func:`atomic_store`, for
Zarr writers that speak URLs) written in place, in both cases with the store's
completion marker deleted first and written last.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipeline.storage import (
    Location,
    as_location,
    filesystem,
    is_remote,
    local_path,
    mark_complete,
    mark_incomplete,
    remove_tree,
    url,
)

TMP_MARK = ".tmp-"


def temporary_sibling(path: Path) -> Path:
    """A fresh temporary name beside ``path``: ``.<name>.tmp-<random><suffix>`` (the suffix kept for GDAL/numpy)."""
    return path.with_name(f".{path.name}{TMP_MARK}{secrets.token_hex(4)}{path.suffix}")


@contextmanager
def atomic_file(path: str | os.PathLike[str] | Location) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path``, on failure it is removed.

    For a remote ``path`` the temporary is local and is uploaded on success.
    """
    location = as_location(path)
    if is_remote(location):
        with _uploaded_file(location) as tmp:
            yield tmp
        return
    target = local_path(location)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(target)
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        for leftover in (tmp, tmp.with_name(tmp.name + ".aux.xml")):  # GDAL may leave a sidecar beside a raster
            leftover.unlink(missing_ok=True)


@contextmanager
def _uploaded_file(target: Location) -> Iterator[Path]:
    """A local temporary file that becomes the object ``target`` in one upload when the block succeeds."""
    with tempfile.TemporaryDirectory(prefix="mmlc-upload-") as folder:
        tmp = Path(folder) / target.name
        yield tmp
        filesystem(target).put_file(str(tmp), url(target))


def write_text(path: str | os.PathLike[str] | Location, text: str) -> Location:
    """Write ``text`` to ``path`` atomically."""
    with atomic_file(path) as tmp:
        tmp.write_text(text)
    return as_location(path)


def write_json(path: str | os.PathLike[str] | Location, document: Any, indent: int | None = 2, allow_nan: bool = True) -> Location:
    """Write ``document`` as JSON to ``path`` atomically (serialised before anything is written)."""
    return write_text(path, json.dumps(document, indent=indent, default=str, allow_nan=allow_nan) + "\n")


def replace_directory(source: Path, target: Path) -> None:
    """Move the complete directory ``source`` to ``target``, replacing what is there.

    The old directory is first moved aside, so ``target`` is at every moment either
    the old complete directory or the new one (absent for an instant between the two
    renames), never a mixture.
    """
    if not target.exists():
        os.replace(source, target)
        return
    if not target.is_dir():
        raise FileExistsError(f"cannot replace {target} with a directory: a file of that name exists")
    old = temporary_sibling(target)
    os.replace(target, old)
    os.replace(source, target)
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_directory(path: str | os.PathLike[str] | Location) -> Iterator[Path]:
    """Yield an empty temporary directory to fill; on success it replaces ``path``, on failure it is removed.

    For a remote ``path`` the directory is local; on success its files are uploaded under
    ``path`` (after the old result's completion marker is deleted and its objects removed)
    and the marker is written last.
    """
    location = as_location(path)
    if is_remote(location):
        with tempfile.TemporaryDirectory(prefix="mmlc-upload-") as folder:
            staging = Path(folder) / location.name
            staging.mkdir()
            yield staging
            with atomic_store(location):
                filesystem(location).put(f"{staging}/", url(location), recursive=True)
        return
    target = local_path(location)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = temporary_sibling(target)
    staging.mkdir()
    try:
        yield staging
        replace_directory(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextmanager
def atomic_store(path: str | os.PathLike[str] | Location) -> Iterator[Location]:
    """Like :func:`atomic_directory`, for writers that speak URLs (Zarr): a remote store is written in place.

    A local ``path`` gets a temporary directory moved into place. A remote ``path`` is yielded
    itself, emptied after its completion marker is deleted; the marker is written when the block
    succeeds, so a failed or killed write leaves a store that readers do not take as complete.
    """
    location = as_location(path)
    if not is_remote(location):
        with atomic_directory(location) as staging:
            yield staging
        return
    mark_incomplete(location)
    remove_tree(location)
    yield location
    mark_complete(location)


def remove_stale_temporaries(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files and directories that killed runs left in ``folder`` (not recursive)."""
    removed = []
    root = Path(folder)
    if not root.is_dir():
        return removed
    for entry in root.iterdir():
        if entry.name.startswith(".") and TMP_MARK in entry.name:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed
