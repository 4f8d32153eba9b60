"""One job per scene: the exclusive lock ``pipeline.run`` and ``pipeline.batch`` take on a scene's output folder.

A local scene folder holds its lock file (``<scene>/.lock``). An object store has no locks: the lock
of a remote scene folder is a local file named by the folder's URL (``$MMLC_CACHE/locks/``), so it
keeps apart the jobs of one machine only (docs/batch.md).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.config.errors import PipelineError
from pipeline.storage import Location, cache_folder, is_remote, local_path, url

LOCK_FILE = ".lock"


class SceneLocked(PipelineError):
    """Another job holds the lock of a scene's output folder."""


def lock_path(scene_dir: Location) -> Path:
    """The lock file of a scene folder: inside it when local; a local file named by its URL when remote."""
    if not is_remote(scene_dir):
        folder = local_path(scene_dir)
        folder.mkdir(parents=True, exist_ok=True)
        return folder / LOCK_FILE
    locks = cache_folder() / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    return locks / (hashlib.sha256(url(scene_dir).encode()).hexdigest()[:24] + LOCK_FILE)


@contextmanager
def scene_lock(scene_dir: Location) -> Iterator[Path]:
    """Hold an exclusive lock on the scene folder's lock file (:func:`lock_path`); yields the lock file.

    Non-blocking: when another process holds it, raises :class:`SceneLocked` at once (a second
    run fails rather than waits; cron retries on its next tick). ``flock`` locks are released by
    the kernel when the holder exits, so a killed job never leaves a stale lock behind.
    """
    path = lock_path(scene_dir)
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise SceneLocked(f"{path}: locked by another job on scene folder {scene_dir} "
                                  "(wait for it to finish, or point this run at another output folder)") from None
            raise
        try:
            yield path
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
