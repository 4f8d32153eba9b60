"""Checkpoints: safetensors + JSON round trip, atomic writes, pickles and mismatches refused."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from models import (
    CheckpointFormatError,
    CheckpointMismatchError,
    build_model,
    checkpoint_hash,
    load_checkpoint,
    save_checkpoint,
)

THREE = (["hs", "sar", "dsm"], [30, 4, 1])
METADATA = {"mean": {"hs": [0.1] * 30}, "classes": ["a", "b"], "catalog_sha256": "abc"}


@pytest.mark.parametrize("method", ["mamol", "baseline", "mmp", "lvpcnet"])
def test_round_trip_gives_identical_logits(method, tmp_path, make_config, make_batch, caplog):
    torch.manual_seed(0)
    config = make_config(method, THREE, missing_tokens="dummy")
    model = build_model(config)
    for p in model.parameters():  # trained-looking weights (LoRA B is zero at init)
        p.data.add_(0.01 * torch.randn_like(p))
    model.eval()
    inputs = make_batch(config)
    available = torch.tensor([[1, 1, 1], [1, 0, 1], [0, 0, 1], [0, 1, 0]], dtype=torch.bool)
    expected = model(inputs, available)

    path = save_checkpoint(model, tmp_path / "ckpt", metadata=METADATA)
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors"]
    saved = json.loads((path / "config.json").read_text())
    assert saved["format_version"] == 1 and saved["model"]["method"] == method
    assert saved["model"]["bands"] == [30, 4, 1] and set(saved["versions"]) >= {"torch", "open_clip", "python"}

    caplog.clear()
    loaded, metadata = load_checkpoint(path, expected_modalities=["hs", "sar", "dsm"], expected_bands=[30, 4, 1])
    assert "trains from scratch" not in caplog.text  # the weights come from the checkpoint
    assert metadata == METADATA
    assert type(loaded) is type(model) and not loaded.training
    assert loaded.config == model.config
    assert torch.equal(loaded(inputs, available), expected)


def test_overwrite_is_atomic_and_leaves_no_temporaries(tmp_path, make_config):
    torch.manual_seed(0)
    first = build_model(make_config("baseline"))
    path = save_checkpoint(first, tmp_path / "ckpt")
    first_hash = checkpoint_hash(path)
    assert checkpoint_hash(path) == first_hash and len(first_hash) == 64
    second = build_model(make_config("baseline"))
    save_checkpoint(second, tmp_path / "ckpt", metadata={"run": 2})
    assert checkpoint_hash(path) != first_hash
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]
    loaded, metadata = load_checkpoint(path)
    assert metadata == {"run": 2}
    assert torch.equal(loaded.head.weight, second.head.weight)


def test_metadata_that_is_not_json_writes_nothing(tmp_path, make_config):
    model = build_model(make_config("baseline"))
    with pytest.raises(TypeError):
        save_checkpoint(model, tmp_path / "ckpt", metadata={"bad": object()})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["model.pt", "weights.pth", "weights.safetensors"])
def test_pickle_file_is_refused(name, tmp_path, make_config):
    model = build_model(make_config("baseline"))
    path = tmp_path / name
    torch.save(model.state_dict(), path)  # zip-format pickle, whatever its suffix
    with pytest.raises(CheckpointFormatError, match="pickle checkpoints are refused; convert to safetensors") as info:
        load_checkpoint(path)
    assert info.value.path == path


def test_plain_pickle_and_pickle_only_directory_are_refused(tmp_path, make_config):
    raw = tmp_path / "state"
    raw.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(CheckpointFormatError, match="pickle"):
        load_checkpoint(raw)
    folder = tmp_path / "ckpt"
    folder.mkdir()
    torch.save(build_model(make_config("baseline")).state_dict(), folder / "model.pt")
    with pytest.raises(CheckpointFormatError, match="pickle checkpoints are refused"):
        load_checkpoint(folder)


def test_missing_and_corrupt_files_are_refused(tmp_path, make_config):
    with pytest.raises(CheckpointFormatError, match="does not exist"):
        load_checkpoint(tmp_path / "nowhere")
    path = save_checkpoint(build_model(make_config("mamol")), tmp_path / "ckpt")
    weights = (path / "model.safetensors").read_bytes()

    (path / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    with pytest.raises(CheckpointFormatError, match="not a readable safetensors") as info:
        load_checkpoint(path)
    assert info.value.path == path

    (path / "model.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointFormatError, match="not a readable safetensors"):
        load_checkpoint(path)

    (path / "model.safetensors").write_bytes(weights)
    (path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointFormatError, match="not valid JSON"):
        load_checkpoint(path)

    (path / "config.json").unlink()
    with pytest.raises(CheckpointFormatError, match="config.json is missing"):
        load_checkpoint(path)


@pytest.mark.parametrize("method", ["mamol", "baseline"])
def test_a_checkpoint_trained_under_former_dense_defaults_still_loads(method, tmp_path, make_config, make_batch):
    # A checkpoint records the catalog's params, not the code's defaults of its day: one trained with
    # 4 px windows and no local convolution (the defaults until they changed) has neither in its config.
    torch.manual_seed(0)
    config = make_config(method, THREE, window_size=4, local_kernel=0)
    model = build_model(config).eval()
    path = save_checkpoint(model, tmp_path / "ckpt")
    saved = json.loads((path / "config.json").read_text())
    saved["model"]["params"] = {k: v for k, v in saved["model"]["params"].items() if k not in ("window_size", "local_kernel")}
    (path / "config.json").write_text(json.dumps(saved))
    loaded, _ = load_checkpoint(path)
    assert loaded.window_size == 4 and loaded.projection.local_kernel == 0
    inputs = make_batch(config)
    available = torch.tensor([[1, 1, 1], [1, 0, 1], [0, 0, 1], [0, 1, 0]], dtype=torch.bool)
    assert torch.equal(loaded(inputs, available), model(inputs, available))


@pytest.mark.parametrize("method", ["mmp", "lvpcnet"])
def test_a_checkpoint_from_before_its_methods_dense_path_still_loads(method, tmp_path, make_config, make_batch):
    # checkpoints saved before MMP and LVPCnet had the dense path lack the window positions and local convolutions
    from safetensors.torch import load_file, save_file

    torch.manual_seed(0)
    config = make_config(method, THREE)
    model = build_model(config).eval()
    path = save_checkpoint(model, tmp_path / "ckpt")
    weights = path / "model.safetensors"
    state = load_file(str(weights))
    old = {k: v for k, v in state.items() if k != "projection.window_position" and not k.startswith("projection.local.")}
    assert len(old) < len(state)
    save_file(old, str(weights))
    loaded, _ = load_checkpoint(path)
    inputs = make_batch(config)
    available = torch.tensor([[1, 1, 1], [1, 0, 1], [0, 0, 1], [0, 1, 0]], dtype=torch.bool)
    with torch.no_grad():
        assert torch.equal(loaded(inputs, available), model(inputs, available))
    # any other weight missing is still refused
    save_file({k: v for k, v in old.items() if k != "head.weight"}, str(weights))
    with pytest.raises(CheckpointFormatError, match="weights do not fit"):
        load_checkpoint(path)


def test_weights_of_another_model_are_refused(tmp_path, make_config):
    path = save_checkpoint(build_model(make_config("mamol")), tmp_path / "ckpt")
    other = save_checkpoint(build_model(make_config("baseline")), tmp_path / "other")
    (path / "model.safetensors").write_bytes((other / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointFormatError, match="weights do not fit"):
        load_checkpoint(path)


def test_modality_or_band_mismatch_is_refused(tmp_path, make_config):
    path = save_checkpoint(build_model(make_config("mamol")), tmp_path / "ckpt")  # hs 63, lidar 2
    with pytest.raises(CheckpointMismatchError) as info:
        load_checkpoint(path, expected_modalities=["hs", "sar"], expected_bands=[63, 2])
    message = str(info.value)
    assert str(path) in message and "['hs', 'lidar']" in message and "['hs', 'sar']" in message
    with pytest.raises(CheckpointMismatchError) as info:
        load_checkpoint(path, expected_modalities=["hs", "lidar"], expected_bands=[144, 2])
    message = str(info.value)
    assert str(path) in message and "'hs': 63" in message and "[144, 2]" in message
    assert isinstance(info.value, ValueError) and info.value.path == path


def test_config_json_size_is_bounded_when_written_and_read(tmp_path, make_config):
    model = build_model(make_config("baseline"))
    with pytest.raises(CheckpointFormatError, match="more than 1048576"):
        save_checkpoint(model, tmp_path / "big", metadata={"blob": ["x" * 100] * 20_000})
    assert not (tmp_path / "big").exists()
    path = save_checkpoint(model, tmp_path / "ckpt")
    config = json.loads((path / "config.json").read_text())
    config["metadata"]["blob"] = "x" * (1 << 20)
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointFormatError, match=r"config.json is \d+ bytes, more than 1048576"):
        load_checkpoint(path)
