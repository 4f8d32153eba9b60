"""The contract every method keeps: shapes, dtypes, missing inputs ignored, determinism."""

from __future__ import annotations

import pytest
import torch

from models import build_model, method_class

METHODS = ["mamol", "baseline", "mmp", "lvpcnet"]
TWO = (["hs", "lidar"], [63, 2])
THREE = (["hs", "sar", "dsm"], [30, 4, 1])


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("modalities", [TWO, THREE, (["a", "b"], [1, 144])], ids=["hs-lidar", "three", "1-144-bands"])
def test_logits_shape_and_dtype(method, modalities, make_config, make_batch):
    torch.manual_seed(0)
    config = make_config(method, modalities)
    model = build_model(config).eval()
    inputs = make_batch(config, batch=3)
    available = torch.ones(3, len(config.modalities), dtype=torch.bool)
    available[1, 0] = False
    logits = model(inputs, available)
    assert logits.shape == (3, 6) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(inputs, available)
    assert low.shape == (3, 6) and low.dtype == torch.bfloat16
    assert torch.allclose(low.float(), logits, atol=0.25, rtol=0.1)


# Methods that take a missing-token mode are tested with both; LVPCnet has none (it compensates instead).
MISSING_TOKEN_CASES = [
    (method, mode) if "missing_tokens" in method_class(method).default_params else (method, None)
    for method in METHODS
    for mode in ("zero", "dummy")
    if mode == "zero" or "missing_tokens" in method_class(method).default_params
]


@pytest.mark.parametrize(("method", "missing_tokens"), MISSING_TOKEN_CASES)
def test_missing_modality_values_are_ignored(method, missing_tokens, make_config, make_batch):
    torch.manual_seed(1)
    extra = {} if missing_tokens is None else {"missing_tokens": missing_tokens}
    config = make_config(method, THREE, **extra)
    model = build_model(config).eval()
    inputs = make_batch(config, batch=4)
    available = torch.tensor([[1, 0, 1], [1, 0, 1], [0, 0, 1], [1, 1, 1]], dtype=torch.bool)
    reference = model(inputs, available)

    garbage = {name: x.clone() for name, x in inputs.items()}
    garbage["sar"] = torch.randn_like(inputs["sar"]) * 1e4  # missing everywhere but sample 3
    garbage["sar"][0] = float("nan")
    garbage["sar"][1] = float("inf")
    garbage["sar"][3] = inputs["sar"][3]  # sample 3 has sar: keep it
    garbage["hs"][2] = -7.0  # sample 2 lacks hs
    assert torch.equal(model(garbage, available), reference)

    changed = {name: x.clone() for name, x in inputs.items()}
    changed["sar"][3] += 1.0  # an available modality must matter
    assert not torch.allclose(model(changed, available)[3], reference[3])


@pytest.mark.parametrize("method", METHODS)
def test_same_seed_same_model(method, make_config, make_batch):
    config = make_config(method)
    inputs = make_batch(config)
    available = torch.ones(4, 2, dtype=torch.bool)
    outputs = []
    for _ in range(2):
        torch.manual_seed(3)
        outputs.append(build_model(config).eval()(inputs, available))
    assert torch.equal(outputs[0], outputs[1])


@pytest.mark.parametrize("method", METHODS)
def test_training_loss_through_the_interface(method, make_config, make_batch):
    torch.manual_seed(0)
    config = make_config(method)
    model = build_model(config)
    inputs = make_batch(config)
    available = torch.tensor([[1, 1], [1, 0], [0, 1], [1, 1]], dtype=torch.bool)
    targets = torch.tensor([0, 1, 2, 5])
    for stage in model.stages():
        params = model.configure_stage(stage)
        losses = model.training_loss(inputs, model.training_availability(available), targets, stage)
        losses["loss"].backward()
        assert losses["loss"].ndim == 0 and torch.isfinite(losses["loss"])
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
    with pytest.raises(ValueError, match="stage"):
        model.configure_stage("no-such-stage")


@pytest.mark.parametrize("method", METHODS)
def test_wrong_inputs_are_refused(method, make_config, make_batch):
    config = make_config(method)
    model = build_model(config)
    inputs = make_batch(config)
    available = torch.ones(4, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match="lidar"):
        model({"hs": inputs["hs"]}, available)
    with pytest.raises(ValueError, match="expected a tensor"):
        model({**inputs, "hs": inputs["hs"][:, :10]}, available)
    with pytest.raises(ValueError, match="bool"):
        model(inputs, available.float())


@pytest.mark.parametrize("method", METHODS)
def test_unknown_parameter_is_an_error(method, make_config):
    with pytest.raises(ValueError, match="no_such_knob"):
        build_model(make_config(method, no_such_knob=1))


def test_parameters_of_another_method_are_ignored(make_config):
    """One catalog's model.params serves every method an evaluation compares."""
    model = build_model(make_config("baseline", lora_rank=4, freeze_backbone=True))
    assert model.backbone_frozen and "lora_rank" not in model.params
