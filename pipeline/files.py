"""Atomic writes: a file or a directory appears complete under its name, or not at all.

One rule, used everywhere the pipeline writes an output: write under a temporary
name beside the target (same folder, so the same filesystem), then move it into
place with :func:`os.replace`. Temporary names start with ``.<name>.tmp-`` so that
:func:`remove_stale_temporaries` can clean what a killed run left behind.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

TMP_MARK = ".tmp-"


def temporary_sibling(path: Path) -> Path:
    """A fresh temporary name beside ``path``: ``.<name>.tmp-<random><suffix>`` (the suffix kept for GDAL/numpy)."""
    return path.with_name(f".{path.name}{TMP_MARK}{secrets.token_hex(4)}{path.suffix}")


@contextmanager
def atomic_file(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path``, on failure it is removed."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(target)
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        for leftover in (tmp, tmp.with_name(tmp.name + ".aux.xml")):  # GDAL may leave a sidecar beside a raster
            leftover.unlink(missing_ok=True)


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    with atomic_file(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | os.PathLike[str], document: Any, indent: int | None = 2, allow_nan: bool = True) -> Path:
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
def atomic_directory(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty temporary directory to fill; on success it replaces ``path``, on failure it is removed."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = temporary_sibling(target)
    staging.mkdir()
    try:
        yield staging
        replace_directory(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def remove_stale_temporaries(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files and directories that killed runs left in ``folder`` (not recursive)."""
    removed: list[Path] = []
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


def publish_files(staging: Path, folder: Path) -> list[Path]:
    """Move every file of the complete ``staging`` folder into ``folder`` (renames only, so no byte is written).

    The set is written in full before the first rename; the renames need no free space, so a full
    disk or a failed export leaves the previous set in ``folder`` untouched.
    """
    folder.mkdir(parents=True, exist_ok=True)
    moved = []
    for entry in sorted(staging.iterdir()):
        os.replace(entry, folder / entry.name)
        moved.append(folder / entry.name)
    return moved


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


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

    def keep(self, path: str | os.PathLike[str]) -> None:
        """Snapshot the folder ``path`` (under the root) unless it is absent or already kept."""
        relative = Path(path).resolve().relative_to(self.root.resolve()).as_posix()
        kept = self._kept()
        if relative in kept or not Path(path).is_dir():
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
