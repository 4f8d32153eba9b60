"""One job per scene: the exclusive lock ``pipeline.run`` and ``pipeline.batch`` take on a scene's output folder."""

from __future__ import annotations

import errno
import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.config.errors import PipelineError

LOCK_FILE = ".lock"


class SceneLocked(PipelineError):
    """Another job holds the lock of a scene's output folder."""


@contextmanager
def scene_lock(scene_dir: Path) -> Iterator[Path]:
    """Hold an exclusive lock on ``scene_dir/.lock``; yields the lock file.

    Non-blocking: when another process holds it, raises :class:`SceneLocked` at once (a second
    run fails rather than waits; cron retries on its next tick). ``flock`` locks are released by
    the kernel when the holder exits, so a killed job never leaves a stale lock behind.
    """
    scene_dir.mkdir(parents=True, exist_ok=True)
    path = scene_dir / LOCK_FILE
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
