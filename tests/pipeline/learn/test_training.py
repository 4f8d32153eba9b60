"""Training through the model interface: deterministic, logged, checkpointed with what mapping needs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from models import load_checkpoint
from pipeline.config.catalog import Catalog
from pipeline.learn.optimisation import linear_warmup_decay
from pipeline.learn.protocols import load_protocol_table
from pipeline.learn.training import parse_protocol, train
from pipeline.train import main


def test_training_writes_a_complete_checkpoint(trained_demo: tuple[Catalog, object]) -> None:
    catalog, checkpoint = trained_demo
    model, metadata = load_checkpoint(checkpoint)
    assert model.config.method == "mamol"
    assert set(metadata["normalisation"]) == {"hs", "lidar"}
    assert len(metadata["normalisation"]["hs"]["mean"]) == 63
    assert [c["value"] for c in metadata["classes"]] == [1, 2, 3, 4, 5, 6]
    for name in ("split.npz", "training_log.csv", "training_log.json", "loss_curve.png", "protocol_train.csv"):
        assert (checkpoint / name).exists(), name
    history = json.loads((checkpoint / "training_log.json").read_text())
    assert history and all(np.isfinite(h["train_loss"]) for h in history)
    table = load_protocol_table(checkpoint / "protocol_train.csv")
    assert table.table.shape[1] == 2 and table.table.any(axis=1).all()
    # eta 0.5 protocol on top of real gaps: some training samples lack a modality.
    assert (~table.table).any()


def test_same_seed_same_weights(demo_catalog: Catalog, tmp_path) -> None:
    a = train(demo_catalog, checkpoint_dir=tmp_path / "a", progress=False)
    b = train(demo_catalog, checkpoint_dir=tmp_path / "b", progress=False)
    wa = load_file(str(a.checkpoint / "model.safetensors"))
    wb = load_file(str(b.checkpoint / "model.safetensors"))
    assert wa.keys() == wb.keys()
    assert all(np.array_equal(wa[k], wb[k]) for k in wa)
    c = train(demo_catalog, seed=1, checkpoint_dir=tmp_path / "c", progress=False)
    wc = load_file(str(c.checkpoint / "model.safetensors"))
    assert not all(np.array_equal(wa[k], wc[k]) for k in wa)


def test_warmup_then_linear_decay() -> None:
    f = linear_warmup_decay(100, 0.1)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(55) == pytest.approx(0.5) and f(100) == 0.0


def test_protocol_strings() -> None:
    assert parse_protocol("eta:0.7").eta == 0.7
    assert parse_protocol("rates:hs=1,lidar=0.3").rates == {"hs": 1.0, "lidar": 0.3}
    assert parse_protocol("mmp").kind == "mmp"
    with pytest.raises(ValueError, match="expected none"):
        parse_protocol("sometimes")


def test_command_line_reports_a_bad_catalog(tmp_path, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nscenes: []\nmodle: {}\n")
    assert main([str(bad)]) == 1
    err = capsys.readouterr().err
    assert str(bad) in err and "modle" in err


def _tiny_problem(seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Two modalities, 3 classes separable by the mean of the first band: 96 patches of 3 x 3."""
    rng = np.random.default_rng(seed)
    targets = np.arange(96) % 3
    hs = rng.normal(size=(96, 4, 3, 3)).astype(np.float32) + targets[:, None, None, None].astype(np.float32)
    lidar = rng.normal(size=(96, 2, 3, 3)).astype(np.float32)
    return {"hs": hs, "lidar": lidar}, np.ones((96, 2), dtype=bool), targets


def _fit_tiny(device: str, seed: int = 0) -> dict[str, torch.Tensor]:
    from models import ModelConfig, build_model
    from pipeline.config.catalog import Training
    from pipeline.learn.training import fit

    patches, avail, targets = _tiny_problem()
    config = ModelConfig(method="baseline", modalities=["hs", "lidar"], bands=[4, 2], num_classes=3, patch_size=3)
    torch.manual_seed(seed)
    model = build_model(config)
    training = Training(epochs=2, batch_size=32)
    fit(model, patches, avail, targets, patches, avail, targets, training, seed, progress=False, device=device)
    assert all(p.device.type == torch.device(device).type for p in model.parameters())
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize(
    "device",
    ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine"))],
)
def test_fit_on_a_device_repeats_its_weights(device: str) -> None:
    first, second, other_seed = _fit_tiny(device), _fit_tiny(device), _fit_tiny(device, seed=1)
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not all(torch.equal(first[k], other_seed[k]) for k in first)


def test_protocol_mmp_masks_every_method_once() -> None:
    from models import ModelConfig, build_model
    from pipeline.config.catalog import Protocol
    from pipeline.learn.training import step_availability

    config = ModelConfig(method="baseline", modalities=["hs", "lidar"], bands=[4, 2], num_classes=3, patch_size=3)
    complete = torch.ones(4000, 2, dtype=torch.bool)
    mmp_protocol = Protocol(kind="mmp")
    for method in ("baseline", "mmp"):
        model = build_model(ModelConfig(**{**config.to_dict(), "method": method}))
        drawn = step_availability(model, mmp_protocol, complete, torch.Generator().manual_seed(0))
        # p = 0.5 per modality, at least one kept: one third of the samples each complete, HS only, LiDAR only
        assert drawn.any(dim=1).all()
        assert abs(drawn.all(dim=1).float().mean().item() - 1 / 3) < 0.03, method
    baseline = build_model(config)
    assert torch.equal(step_availability(baseline, Protocol(kind="eta"), complete, torch.Generator()), complete)


def test_per_epoch_protocol_masks_redraw_the_patterns_after_the_first_epoch() -> None:
    """Same first epoch as ``fixed`` (the caller's draw), different weights once the second epoch redraws."""
    from models import ModelConfig, build_model
    from pipeline.config.catalog import Protocol, Training
    from pipeline.learn.training import fit, simulated_availability

    patches, real, targets = _tiny_problem()
    protocol = Protocol(kind="eta", eta=0.7)
    drawn = simulated_availability(protocol, real, ["hs", "lidar"], 0)
    assert not drawn.all()  # the protocol hides a modality on most samples
    config = ModelConfig(method="baseline", modalities=["hs", "lidar"], bands=[4, 2], num_classes=3, patch_size=3)
    weights = {}
    for masks, epochs in (("fixed", 1), ("per_epoch", 1), ("fixed", 2), ("per_epoch", 2)):
        torch.manual_seed(0)
        model = build_model(config)
        training = Training(epochs=epochs, batch_size=32, protocol_masks=masks)
        fit(model, patches, drawn, targets, patches, drawn, targets, training, 0, progress=False, device="cpu",
            protocol=protocol, train_real=real)
        weights[masks, epochs] = model.head.weight.detach().clone()
    assert torch.equal(weights["fixed", 1], weights["per_epoch", 1])
    assert not torch.equal(weights["fixed", 2], weights["per_epoch", 2])
