"""pipeline.files: files and directories appear complete under their name or not at all."""

from __future__ import annotations

import errno
import time
from pathlib import Path

import dask
import pytest

from pipeline.files import atomic_directory, atomic_file, atomic_store, awaited_dask_tasks, remove_stale_temporaries, write_json


def test_a_failed_file_write_keeps_the_old_file_and_leaves_nothing_else(tmp_path: Path) -> None:
    target = tmp_path / "report.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_file(target) as tmp:
        tmp.write_text("half")
        (tmp.with_name(tmp.name + ".aux.xml")).write_text("GDAL sidecar")
        assert tmp.parent == tmp_path and tmp != target
        raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]
    with atomic_file(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_json_that_cannot_be_serialised_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        write_json(tmp_path / "r.json", {"x": float("nan")}, allow_nan=False)
    assert list(tmp_path.iterdir()) == []


def test_a_directory_is_replaced_whole_or_kept(tmp_path: Path) -> None:
    target = tmp_path / "store"
    with atomic_directory(target) as staging:
        (staging / "a").write_text("1")
    with pytest.raises(RuntimeError), atomic_directory(target) as staging:
        (staging / "b").write_text("2")
        raise RuntimeError("killed")
    assert sorted(p.name for p in target.iterdir()) == ["a"]
    with atomic_directory(target) as staging:
        (staging / "b").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["b"]
    assert [p.name for p in tmp_path.iterdir()] == ["store"]


def test_stale_temporaries_of_killed_runs_are_removed(tmp_path: Path) -> None:
    (tmp_path / ".scene.zarr.tmp-0a1b2c3d").mkdir()
    (tmp_path / ".report.json.tmp-0a1b2c3d.json").write_text("{")
    (tmp_path / "report.json").write_text("{}")
    (tmp_path / ".hidden").write_text("kept: not ours")
    removed = remove_stale_temporaries(tmp_path)
    assert sorted(p.name for p in removed) == [".report.json.tmp-0a1b2c3d.json", ".scene.zarr.tmp-0a1b2c3d"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hidden", "report.json"]


def test_a_failed_dask_write_leaves_no_staging_directory_behind(tmp_path: Path) -> None:
    # one task fails at once (a full disk) while another is still running and writes afterwards:
    # the staging directory must be removed after the running task ended, not before
    target = tmp_path / "store.zarr"
    with dask.config.set(num_workers=2), pytest.raises(OSError, match="No space left"):
        with atomic_store(target) as staging, awaited_dask_tasks():
            def write_chunk(index: int) -> None:
                if index == 0:
                    time.sleep(0.05)
                    raise OSError(errno.ENOSPC, "No space left on device")
                time.sleep(0.5)
                chunk = Path(str(staging)) / "hs" / "c" / str(index)
                chunk.parent.mkdir(parents=True, exist_ok=True)
                chunk.write_bytes(b"chunk")

            dask.compute(*(dask.delayed(write_chunk)(i) for i in range(2)), scheduler="threads")
    time.sleep(0.7)  # longer than the running task: nothing may appear after the error
    assert list(tmp_path.iterdir()) == []
