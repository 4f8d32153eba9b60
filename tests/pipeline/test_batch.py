"""pipeline.batch: idempotent dated jobs, per-scene locks, failures isolated, exit codes, JSON-lines log."""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import rasterio
import yaml

from pipeline.batch import LOG_FILE, STATE_FILE, main, run_batch, scene_key
from pipeline.config.catalog import parse_catalog
from pipeline.config.errors import PipelineError
from pipeline.datasets.demo import generate_demo_scene
from pipeline.locks import scene_lock

ROOT = Path(__file__).resolve().parents[2]
TINY_SHAPE = (32, 64)

_spec = importlib.util.spec_from_file_location("_shared_fixtures", ROOT / "tests" / "conftest.py")
shared = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(shared)  # small_demo_dict: catalogs/demo.yaml re-pointed at generated files


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return generate_demo_scene(tmp_path_factory.mktemp("batch-tiny") / "data", seed=0,
                               height=TINY_SHAPE[0], width=TINY_SHAPE[1])


def catalog_dict(files: dict[str, Path], checkpoint: Path | None) -> dict:
    data = shared.small_demo_dict(files, Path("unused"))
    # not "demo": the session checkpoint was trained on the 64 x 160 scene "demo", and a checkpoint's
    # split is applied to a scene of the same name when the run measures held-out accuracy
    data["scenes"][0]["name"] = "tiny"
    if checkpoint is not None:
        data["model"]["checkpoint"] = str(checkpoint)
    return data


def write_catalog(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def log_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_second_run_skips_and_a_failing_scene_does_not_stop_the_others(tiny_files, tmp_path: Path) -> None:
    data = catalog_dict(tiny_files, None)
    data["model"]["patch_size"] = 3  # 18 tokens a pixel: the job logic, not the model, is tested here
    broken = copy.deepcopy(data["scenes"][0])
    broken["name"] = "broken"
    broken["modalities"][0]["source"]["path"] = str(tmp_path / "missing-hs.tif")
    data["scenes"].insert(0, broken)  # the failing scene comes first: the good one must still run
    catalog = write_catalog(tmp_path / "two-scenes.yaml", data)
    out = tmp_path / "out"

    assert main([str(catalog), "--output", str(out), "--date", "2024-06-01"]) == 1
    first = log_lines(out / LOG_FILE)
    assert [(e["scene"], e["status"]) for e in first] == [("broken", "failed"), ("tiny", "done")]
    assert "missing-hs.tif" in first[0]["error"]
    dated = out / "tiny" / "2024-06-01"
    assert set(first[1]["outputs"]) == {"landcover", "confidence", "availability", "quicklook", "webmap", "report", "stac"}
    assert all(Path(p).parent == dated for p in first[1]["outputs"].values())
    with rasterio.open(dated / "landcover.tif") as src:
        assert (src.height, src.width) == TINY_SHAPE and src.read(1).any()
    work = out / "_work" / "tiny"
    assert (work / "map.zarr").is_dir() and (work / "checkpoints" / "mamol" / "model.safetensors").is_file()
    assert not (dated / "map.zarr").exists()
    assert not (out / "broken" / STATE_FILE).exists()
    stamp = (dated / "landcover.tif").stat().st_mtime_ns

    # unchanged: the good scene is skipped (nothing rewritten), the broken one fails again
    assert main([str(catalog), "--output", str(out), "--date", "2024-06-02"]) == 1
    second = log_lines(out / LOG_FILE)[2:]
    assert [(e["scene"], e["status"]) for e in second] == [("broken", "failed"), ("tiny", "skipped")]
    assert second[1]["outputs"] == first[1]["outputs"] and second[1]["date"] == "2024-06-01"
    assert (dated / "landcover.tif").stat().st_mtime_ns == stamp
    assert not (out / "tiny" / "2024-06-02").exists()

    # the same scene from another catalog file: unchanged, so exit 0 and skipped
    alone = write_catalog(tmp_path / "one-scene.yaml", {**data, "scenes": [data["scenes"][1]]})
    assert main([str(alone), "--output", str(out), "--date", "2024-06-02"]) == 0
    assert log_lines(out / LOG_FILE)[-1]["status"] == "skipped"

    # --force maps again into the new date's folder, reusing the shared map store
    assert main([str(alone), "--output", str(out), "--date", "2024-06-03", "--force"]) == 0
    last = log_lines(out / LOG_FILE)[-1]
    assert last["status"] == "done" and Path(last["outputs"]["landcover"]).parent == out / "tiny" / "2024-06-03"
    report = json.loads((out / "tiny" / "2024-06-03" / "report.json").read_text())
    assert report["mapping"]["reused"] is True
    state = json.loads((out / "tiny" / STATE_FILE).read_text())
    assert state["date"] == "2024-06-03" and state["key"] == last["key"]


def test_scene_key_follows_inputs_catalog_entry_and_checkpoint(tiny_files, trained_demo, tmp_path: Path) -> None:
    _, checkpoint = trained_demo
    files = {role: Path(shutil.copy2(p, tmp_path / p.name)) for role, p in tiny_files.items()}
    data = catalog_dict(files, checkpoint)

    def key(d: dict) -> str:
        catalog = parse_catalog(d, tmp_path / "c.yaml")
        return scene_key(catalog, catalog.scenes[0])

    base = key(data)
    assert key(copy.deepcopy(data)) == base
    other_cluster = copy.deepcopy(data)
    other_cluster["cluster"] = {"workers": 2}
    assert key(other_cluster) == base, "where it runs does not change the map"
    other_entry = copy.deepcopy(data)
    other_entry["scenes"][0]["availability"]["failures"][0]["reason"] = "re-flown later"
    assert key(other_entry) != base
    other_training = copy.deepcopy(data)
    other_training["training"]["seed"] = 7
    assert key(other_training) != base
    no_checkpoint = copy.deepcopy(data)
    no_checkpoint["model"].pop("checkpoint")
    assert key(no_checkpoint) != base
    later = time.time() + 60
    os.utime(files["lidar"], (later, later))
    assert key(data) != base, "an input file that changed"


def _lock_holder(path: Path) -> subprocess.Popen:
    """Another process holding the ``flock`` of ``path`` (for 60 s, or until killed)."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'a'); fcntl.flock(f, fcntl.LOCK_EX); "
         "print('locked', flush=True); time.sleep(60)", str(path)],
        stdout=subprocess.PIPE, text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    return holder


def test_a_locked_scene_fails_and_leaves_its_outputs_alone(tiny_files, tmp_path: Path) -> None:
    catalog = write_catalog(tmp_path / "c.yaml", catalog_dict(tiny_files, None))
    out = tmp_path / "out"
    (out / "tiny").mkdir(parents=True)
    holder = _lock_holder(out / "tiny" / ".lock")
    try:
        outcomes = run_batch([catalog], output=out, date="2024-06-01")
        assert [(o.scene, o.status) for o in outcomes] == [("tiny", "failed")]
        assert "locked by another job" in outcomes[0].error
        assert sorted(p.name for p in (out / "tiny").iterdir()) == [".lock"]
        assert log_lines(out / LOG_FILE)[0]["error"] == outcomes[0].error
        with pytest.raises(PipelineError, match="locked by another job"):
            with scene_lock(out / "tiny"):
                pass
    finally:
        holder.kill()
        holder.communicate()  # waits and closes the pipe
    with scene_lock(out / "tiny"):  # released when the holder died
        pass


def test_usage_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path / "no-such.yaml")])
    assert exc.value.code == 2
    assert "no such catalog file" in capsys.readouterr().err
    catalog = write_catalog(tmp_path / "c.yaml", {"name": "x"})
    with pytest.raises(SystemExit) as exc:
        main([str(catalog), "--date", "2024-13-01"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 2


def test_an_invalid_catalog_fails_with_status_1_and_a_log_line(tiny_files, tmp_path: Path) -> None:
    data = catalog_dict(tiny_files, None)
    data["output"]["colour"] = "blue"
    bad = write_catalog(tmp_path / "bad.yaml", data)
    log = tmp_path / "logs" / "batch.jsonl"
    done = subprocess.run([sys.executable, "-m", "pipeline.batch", str(bad), "--log", str(log)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 1, done.stderr
    (entry,) = log_lines(log)
    assert entry["status"] == "failed" and entry["scene"] is None
    assert "output.colour" in entry["error"] and str(bad) in entry["error"]


def test_lock_of_a_remote_scene_folder_is_a_local_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An object store has no locks: a remote scene folder is locked by a local file named by its URL."""
    from pipeline.locks import lock_path
    from pipeline.storage import as_location

    monkeypatch.setenv("MMLC_CACHE", str(tmp_path / "cache"))
    remote = as_location("s3://bucket/outputs/tiny")
    path = lock_path(remote)
    assert path.parent == tmp_path / "cache" / "locks" and path.name.endswith(".lock")
    assert lock_path(as_location("s3://bucket/outputs/other")) != path
    holder = _lock_holder(path)
    try:
        with pytest.raises(PipelineError, match="locked by another job"):
            with scene_lock(remote):
                pass
    finally:
        holder.kill()
        holder.communicate()  # waits and closes the pipe
    with scene_lock(remote):
        pass
