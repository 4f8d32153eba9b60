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
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dask
import dask.threaded

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


@contextmanager
def awaited_dask_tasks() -> Iterator[None]:
    """Dask's threaded scheduler on a private pool whose exit waits for the tasks still running.

    When one task of a computation fails, dask raises at once while the tasks already running
    go on; a writer's tasks then re-create the folders of a staging directory that the failed
    write has just removed (seen with 16 threads on a full disk). Enter it after the staging
    directory (``with atomic_store(path) as staging, awaited_dask_tasks():``) so that its exit,
    which comes first, waits for them before the staging directory is removed.
    """
    # dask's own pool class where it has one (it carries contextvars into the tasks, as dask's default pool does)
    executor = getattr(dask.threaded, "ContextAwareThreadPoolExecutor", ThreadPoolExecutor)
    pool = executor(max_workers=dask.config.get("num_workers", None) or os.cpu_count() or 1)
    try:
        with dask.config.set(pool=pool):
            yield
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def remove_stale_temporaries(folder: str | os.PathLike[str] | Location) -> list[Path]:
    """Delete the temporary files and directories that killed runs left in ``folder`` (not recursive).

    Only local folders: on an object store nothing is renamed into place, so nothing is left aside.
    """
    removed: list[Path] = []
    if is_remote(as_location(folder)):
        return removed
    root = local_path(as_location(folder))
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


@contextmanager
def file_set(folder: str | os.PathLike[str], names: list[str]) -> Iterator[dict[str, Path]]:
    """Temporary paths for the files ``names`` of ``folder``; they all move into place when the block
    succeeds (renames, :func:`publish_files`), none does when it fails."""
    target = Path(folder)
    target.mkdir(parents=True, exist_ok=True)
    staging = temporary_sibling(target / "files")
    staging.mkdir()
    try:
        yield {name: staging / name for name in names}
        publish_files(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def publish_files(staging: Path, folder: Location) -> list[Location]:
    """Move every file of the complete ``staging`` folder into ``folder`` (renames only, so no byte is written).

    The set is written in full before the first rename; the renames need no free space, so a full
    disk or a failed export leaves the previous set in ``folder`` untouched. On an object store
    each file is uploaded whole (one PUT), in name order, so ``stac-item.json`` comes last.
    """
    moved: list[Location] = []
    if is_remote(folder):
        for entry in sorted(staging.iterdir()):
            with atomic_file(folder / entry.name) as tmp:
                shutil.copyfile(entry, tmp)
            moved.append(folder / entry.name)
        return moved
    target = local_path(folder)
    target.mkdir(parents=True, exist_ok=True)
    for entry in sorted(staging.iterdir()):
        os.replace(entry, target / entry.name)
        moved.append(target / entry.name)
    return moved


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


class NoRollback:
    """What a run on an object store keeps: nothing. There a store counts only once its completion
    marker is written (:func:`atomic_store`), so a failed run never leaves a half-written result to undo."""

    def keep(self, path: object) -> None:
        """Nothing to snapshot."""

    def restore(self) -> None:
        """Nothing to put back."""

    def commit(self) -> None:
        """Nothing to drop."""


def rollback_for(root: Location) -> Rollback | NoRollback:
    """The rollback of a run writing under ``root``: hard-link snapshots locally, none on an object store."""
    return NoRollback() if is_remote(root) else Rollback(local_path(root))


ROLLBACK_FOLDER = ".rollback"
KEPT_LIST = "KEPT"


class Rollback:
    """Folders a run may replace, kept as they were until the run commits, and put back when it fails.

    :meth:`keep` snapshots a folder as hard links (no bytes copied; the pipeline never rewrites a file
    in place, it replaces whole folders, so the links keep the old content). :meth:`restore` puts every
    snapshot back; :meth:`commit` drops them with one rename. A snapshot left by a killed run is
    restored by the next :class:`Rollback` on the same root, so a run that never committed never
    leaves, say, a new scene store under an older map.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.folder = self.root / ROLLBACK_FOLDER
        if self.folder.is_dir():
            self.restore()
        self.folder.mkdir(parents=True, exist_ok=True)

    def _kept(self) -> list[str]:
        listing = self.folder / KEPT_LIST
        return listing.read_text().split("\n")[:-1] if listing.is_file() else []

    def keep(self, path: str | os.PathLike[str] | Location) -> None:
        """Snapshot the folder ``path`` (under the root) unless it is absent or already kept."""
        path = local_path(as_location(path))
        relative = path.resolve().relative_to(self.root.resolve()).as_posix()
        kept = self._kept()
        if relative in kept or not path.is_dir():
            return
        snapshot = self.folder / relative
        shutil.rmtree(snapshot, ignore_errors=True)  # an unlisted leftover of a run killed while snapshotting
        snapshot.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(path, snapshot, copy_function=_link_or_copy, symlinks=True)
        write_text(self.folder / KEPT_LIST, "".join(f"{k}\n" for k in [*kept, relative]))

    def restore(self) -> None:
        """Put every snapshot back in place of what the run wrote, and drop the snapshots."""
        for relative in self._kept():
            replace_directory(self.folder / relative, self.root / relative)
        self._drop()

    def commit(self) -> None:
        """The run's outputs are complete: drop the snapshots (one rename, then a clean-up)."""
        self._drop()

    def _drop(self) -> None:
        if not self.folder.exists():
            return
        doomed = temporary_sibling(self.folder)
        os.replace(self.folder, doomed)
        shutil.rmtree(doomed, ignore_errors=True)
