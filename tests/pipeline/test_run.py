"""pipeline.run as a user meets it: refused checkpoints, one run per scene, outputs as a complete set."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import xarray as xr
import yaml

from pipeline.config.catalog import Catalog
from pipeline.data.ingest import stored_hash
from pipeline.run import main as run_main

ROOT = Path(__file__).resolve().parents[2]
EXPORTS = ("landcover.tif", "confidence.tif", "availability.tif", "quicklook.png", "report.json", "stac-item.json")


def write_catalog(catalog: Catalog, path: Path, **model: object) -> Path:
    """``catalog`` as a YAML file at ``path`` (paths absolute), with ``model`` keys replaced."""
    data = catalog.model_dump(mode="json")
    data["model"].update(model)
    path.write_text(yaml.safe_dump(data))
    return path


def copy_checkpoint(checkpoint: Path, folder: Path, edit) -> Path:
    """A copy of ``checkpoint`` whose config.json went through ``edit(config)``."""
    shutil.copytree(checkpoint, folder)
    config = json.loads((folder / "config.json").read_text())
    edit(config)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="module")
def published(trained_demo, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One complete run of the small demo with the session's checkpoint; tests copy its output folder."""
    catalog, checkpoint = trained_demo
    folder = tmp_path_factory.mktemp("published")
    path = write_catalog(catalog, folder / "catalog.yaml", checkpoint=str(checkpoint))
    assert run_main([str(path), "--output", str(folder / "out"), "--quiet"]) == 0
    return folder / "out"


def copy_of(published: Path, out: Path) -> Path:
    """A copy of the published output folder at ``out`` (its map is current for the session's checkpoint)."""
    shutil.copytree(published, out, symlinks=True, ignore=shutil.ignore_patterns(".lock"))
    return out


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


def _reverse(config: dict) -> None:
    config["metadata"]["classes"] = config["metadata"]["classes"][::-1]


def _out_of_range(config: dict) -> None:
    for i, c in enumerate(config["metadata"]["classes"]):
        c["value"] = 40 + i


@pytest.mark.parametrize("edit", [_reverse, _out_of_range], ids=["reversed", "values-40-45"])
def test_a_checkpoint_whose_classes_differ_from_the_catalog_is_refused_before_mapping(
        trained_demo, tmp_path: Path, capsys: pytest.CaptureFixture[str], edit) -> None:
    catalog, checkpoint = trained_demo
    bad = copy_checkpoint(checkpoint, tmp_path / "edited", edit)
    path = write_catalog(catalog.model_copy(update={"output": catalog.output.model_copy(update={"folder": tmp_path / "out"})}),
                         tmp_path / "catalog.yaml", checkpoint=str(bad))
    assert run_main([str(path), "--quiet"]) == 1
    err = capsys.readouterr().err
    [line] = error_lines(err)
    assert str(bad / "config.json") in line and str(path) in line and "metadata.classes" in line
    assert "Traceback" not in err
    scene = tmp_path / "out" / "demo"
    assert not any((scene / name).exists() for name in EXPORTS)
    assert not (scene / "map.zarr").exists() and not (scene / "map.zarr.partial").exists()


def test_mapping_alone_checks_the_class_table_before_submitting_tiles(trained_demo, tmp_path: Path) -> None:
    from distributed import Client

    from pipeline.config.errors import CheckpointError
    from pipeline.data.ingest import ingest_scene
    from pipeline.inference.mapping import map_scene

    catalog, checkpoint = trained_demo
    bad = copy_checkpoint(checkpoint, tmp_path / "edited", _reverse)
    store = ingest_scene(catalog, catalog.scenes[0])
    client = Client.__new__(Client)  # never used: the check comes before any task is submitted
    with pytest.raises(CheckpointError, match="metadata.classes") as caught:
        map_scene(client, store, bad, tmp_path / "map.zarr", 32, progress=False)
    assert str(store) in str(caught.value)
    assert not (tmp_path / "map.zarr.partial").exists()


LOCK_HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from pipeline.locks import scene_lock
    with scene_lock(Path(sys.argv[1])):
        print("locked", flush=True)
        time.sleep(60)
""")


def test_a_second_run_on_the_same_scene_fails_in_one_line_naming_the_lock(trained_demo, tmp_path: Path) -> None:
    catalog, checkpoint = trained_demo
    out = tmp_path / "out"
    path = write_catalog(catalog, tmp_path / "catalog.yaml", checkpoint=str(checkpoint))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(out / "demo")], stdout=subprocess.PIPE, text=True,
                              env=env, cwd=ROOT)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        second = subprocess.run([sys.executable, "-m", "pipeline.run", str(path), "--output", str(out), "--quiet"],
                                capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    finally:
        holder.kill()
        holder.communicate()  # waits and closes the pipe
    assert second.returncode == 1
    [line] = error_lines(second.stderr)
    assert str(out / "demo" / ".lock") in line and "locked by another job" in line
    assert "Traceback" not in second.stderr
    assert not (out / "demo" / "scene.zarr").exists()  # it did no work


def test_a_failed_rerun_keeps_the_previous_scene_store_map_and_exports(trained_demo, published: Path, tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    catalog, checkpoint = trained_demo
    out = copy_of(published, tmp_path / "out")
    scene = out / "demo"
    before = {name: (scene / name).read_bytes() for name in EXPORTS}
    scene_hash = stored_hash(scene / "scene.zarr")
    map_attrs = xr.open_zarr(scene / "map.zarr", consolidated=False).attrs

    # New input bytes (the scene store must be rebuilt) and a checkpoint that fails after ingest.
    source = Path(catalog.scenes[0].modalities[0].source.files[0])
    shadow = tmp_path / "inputs"
    shutil.copytree(source.parent, shadow)
    os.utime(shadow / source.name, (time.time() + 10, time.time() + 10))
    data = catalog.model_dump(mode="json")
    for modality in data["scenes"][0]["modalities"]:
        modality["source"]["path"] = str(shadow / Path(modality["source"]["path"]).name)
    data["model"]["checkpoint"] = str(copy_checkpoint(checkpoint, tmp_path / "edited", _reverse))
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(data))
    stale = scene / ".landcover.tif.tmp-deadbeef.tif"  # what a killed export leaves
    stale.write_bytes(b"half")

    assert run_main([str(path), "--output", str(out), "--quiet"]) == 1
    assert len(error_lines(capsys.readouterr().err)) == 1
    assert stored_hash(scene / "scene.zarr") == scene_hash  # the rebuilt scene store was put back
    assert xr.open_zarr(scene / "map.zarr", consolidated=False).attrs == map_attrs
    assert {name: (scene / name).read_bytes() for name in EXPORTS} == before
    assert not stale.exists()
    assert not [p.name for p in scene.iterdir() if ".tmp-" in p.name or p.name == ".rollback"]


def test_a_rollback_left_by_a_killed_run_is_restored_by_the_next_run(tmp_path: Path) -> None:
    from pipeline.files import Rollback, replace_directory

    root = tmp_path / "scene"
    (root / "scene.zarr").mkdir(parents=True)
    (root / "scene.zarr" / "chunk").write_text("old")
    rollback = Rollback(root)
    rollback.keep(root / "scene.zarr")
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "chunk").write_text("new")
    replace_directory(fresh, root / "scene.zarr")  # the run replaced the store, then was killed (no commit)
    Rollback(root)  # the next run
    assert (root / "scene.zarr" / "chunk").read_text() == "old"
    assert sorted(p.name for p in root.iterdir()) == [".rollback", "scene.zarr"]  # a fresh, empty snapshot folder


def test_a_rerun_with_nothing_to_classify_starts_no_cluster(trained_demo, published: Path, tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    catalog, checkpoint = trained_demo
    out = copy_of(published, tmp_path / "out")
    path = write_catalog(catalog, tmp_path / "catalog.yaml", checkpoint=str(checkpoint))
    with caplog.at_level(logging.INFO):
        assert run_main([str(path), "--output", str(out), "--quiet"]) == 0
    assert "no cluster started" in caplog.text
    assert "local Dask cluster" not in caplog.text
    report = json.loads((out / "demo" / "report.json").read_text())
    assert report["mapping"]["reused"] and report["mapping"]["tiles_computed"] == 0


def test_an_unwritable_output_folder_names_the_catalog(trained_demo, tmp_path: Path, capsys) -> None:
    catalog, checkpoint = trained_demo
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    path = write_catalog(catalog, tmp_path / "catalog.yaml", checkpoint=str(checkpoint))
    assert run_main([str(path), "--output", str(blocker / "out"), "--quiet"]) == 1
    [line] = error_lines(capsys.readouterr().err)
    assert line.startswith(f"error: {path}: output.folder:") and "(no file)" not in line


# --------------------------------------------------------------------------- anticipated failures: one error line


class Evil:
    """Pickles to a call of a function: what a weights-only loader must refuse."""

    def __reduce__(self) -> tuple:
        return (os.getcwd, ())


@pytest.mark.parametrize("kind", ["missing", "pickled"])
def test_a_bad_pretrained_weights_file_is_one_error_line_naming_it(trained_demo, tmp_path: Path, capsys, kind: str) -> None:
    import torch

    from pipeline.train import main as train_main

    catalog, _ = trained_demo
    weights = tmp_path / "clip.bin"
    if kind == "pickled":
        torch.save({"state_dict": {"w": torch.zeros(1)}, "extra": Evil()}, weights)
    data = catalog.model_dump(mode="json")
    data["model"].update(backbone="ViT-B-16", pretrained=str(weights))
    data["output"]["folder"] = str(tmp_path / "out")
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(data))
    assert train_main([str(path)]) == 1
    err = capsys.readouterr().err
    [line] = error_lines(err)
    assert f"{path}: model.pretrained:" in line and str(weights) in line
    assert "Traceback" not in err and "weights_only" not in err
    assert ("does not exist" if kind == "missing" else "is a pickle") in line
    assert not (tmp_path / "out" / "demo" / "checkpoints" / "mamol").exists()


def test_an_object_array_in_the_split_file_is_one_error_line(trained_demo, tmp_path: Path, capsys) -> None:
    import numpy as np

    catalog, checkpoint = trained_demo
    bad = tmp_path / "ckpt"
    shutil.copytree(checkpoint, bad)
    np.savez(bad / "split.npz", train_rows=np.array([{"a": 1}], dtype=object))
    path = write_catalog(catalog, tmp_path / "catalog.yaml", checkpoint=str(bad))
    assert run_main([str(path), "--output", str(tmp_path / "out"), "--quiet"]) == 1
    err = capsys.readouterr().err
    [line] = error_lines(err)
    assert f"{bad / 'split.npz'}: metadata.split_file:" in line and "Traceback" not in err
    scene = tmp_path / "out" / "demo"
    assert not (scene / "map.zarr").exists() and not any((scene / name).exists() for name in EXPORTS)


def fill_to_the_last_byte(path: Path) -> None:
    """Write zeros into ``path`` until its file system is full."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        for block in (1 << 16, 1):
            try:
                while True:
                    os.write(fd, b"\0" * block)
            except OSError:
                pass
    finally:
        os.close(fd)


@pytest.fixture
def mounted(tmp_path: Path):
    """``mounted(folder, options)``: a tmpfs mounted at ``folder`` for this test (skips where mounting is not allowed)."""
    points: list[Path] = []

    def mount(folder: Path, options: str) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {done.stderr.strip()}")
        points.append(folder)
        return folder

    yield mount
    for folder in reversed(points):
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_a_read_only_checkpoints_folder_is_one_error_line(trained_demo, tmp_path: Path, capsys, mounted) -> None:
    catalog, _ = trained_demo
    out = tmp_path / "out"
    mounted(out / "demo" / "checkpoints", "ro,size=1m")
    path = write_catalog(catalog, tmp_path / "catalog.yaml")
    assert run_main([str(path), "--output", str(out), "--quiet"]) == 1
    err = capsys.readouterr().err
    [line] = error_lines(err)
    assert f"{path}: output.folder: expected a writable folder at {out / 'demo' / 'checkpoints'}" in line
    assert "Read-only file system" in line and "Traceback" not in err


def test_a_full_disk_keeps_the_previous_outputs_and_is_one_error_line(trained_demo, published: Path, tmp_path: Path,
                                                                      capsys, mounted) -> None:
    catalog, checkpoint = trained_demo
    out = copy_of(published, mounted(tmp_path / "disk", "size=24m") / "out")
    path = write_catalog(catalog, tmp_path / "catalog.yaml", checkpoint=str(checkpoint))
    scene = out / "demo"
    before = {name: (scene / name).read_bytes() for name in EXPORTS}
    fill_to_the_last_byte(out / "filler")
    assert run_main([str(path), "--output", str(out), "--quiet"]) == 1  # the map is current: only the exports are written
    err = capsys.readouterr().err
    [line] = error_lines(err)
    assert "No space left on device" in line and str(scene) in line and "Traceback" not in err
    assert {name: (scene / name).read_bytes() for name in EXPORTS} == before
    assert not [p.name for p in scene.iterdir() if ".tmp-" in p.name or p.name == ".rollback"]


def test_a_full_disk_during_ingest_names_the_scene_store(trained_demo, tmp_path: Path, capsys, mounted) -> None:
    catalog, checkpoint = trained_demo
    out = mounted(tmp_path / "disk", "size=256k")
    path = write_catalog(catalog, tmp_path / "catalog.yaml", checkpoint=str(checkpoint))
    assert run_main([str(path), "--output", str(out), "--quiet"]) == 1
    err = capsys.readouterr().err
    [line] = error_lines(err)
    assert "No space left on device" in line and "scene.zarr" in line and "Traceback" not in err
    assert sorted(p.name for p in (out / "demo").iterdir()) == [".lock"]  # no half-written store, no snapshot
