"""The square's symmetries on training samples: labels and masks stay on their pixels, on both paths."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models import ModelConfig, build_model
from pipeline.config.catalog import Training
from pipeline.learn.augmentation import dihedral_crops, dihedral_patches, turn
from pipeline.learn.training import fit


def _eight_views(square: torch.Tensor) -> list[torch.Tensor]:
    """The eight symmetries of a (H, W) square, written out with rot90 and flip."""
    turned = [torch.rot90(square, k, dims=(0, 1)) for k in range(4)]
    return turned + [t.flip(-1) for t in turned]


def test_turn_applies_each_samples_own_symmetry_and_zero_is_the_identity() -> None:
    square = torch.arange(9.0).reshape(3, 3)
    batch = square.expand(8, 2, 3, 3).clone()
    out = turn(batch, np.arange(8))
    for s, view in enumerate(_eight_views(square)):
        assert torch.equal(out[s, 0], view) and torch.equal(out[s, 1], view)
    assert len({tuple(o.flatten().tolist()) for o in out}) == 8
    assert torch.equal(turn(batch, np.zeros(8, dtype=int)), batch)
    with pytest.raises(ValueError, match="one symmetry per sample"):
        turn(batch, np.arange(4))


def test_dihedral_crops_keep_every_label_and_mask_on_its_pixel_under_the_eight_symmetries() -> None:
    cell, context = 4, 2
    size = cell + 2 * context
    values = torch.arange(2 * size * size, dtype=torch.float32).reshape(1, 2, size, size).repeat(8, 1, 1, 1)
    available = values[:, :1] % 3 > 0  # (B, 1, H, W), a pattern tied to the values
    targets = values[:, 0, context:-context, context:-context].long()  # each cell pixel's label is its own value
    inputs, avail, turned = dihedral_crops({"hs": values}, available, targets, np.arange(8))
    centre = inputs["hs"][:, 0, context:-context, context:-context]
    assert torch.equal(centre.long(), turned)  # the cell's labels moved with its pixels
    assert torch.equal(avail, inputs["hs"][:, :1] % 3 > 0)  # and so did the availability
    assert torch.equal(inputs["hs"][:, 1], inputs["hs"][:, 0] + size * size)  # every band the same way
    assert len({tuple(x.flatten().tolist()) for x in inputs["hs"]}) == 8  # eight different symmetries
    assert torch.equal(inputs["hs"][0], values[0])  # symmetry 0 is the identity


def test_dihedral_patches_keep_the_centre_pixel_the_label_belongs_to() -> None:
    patches = {"hs": torch.randn(8, 3, 5, 5), "lidar": torch.randn(8, 1, 5, 5)}
    turned = dihedral_patches(patches, np.arange(8))
    for m in patches:
        assert torch.equal(turned[m][:, :, 2, 2], patches[m][:, :, 2, 2])
        assert not torch.equal(turned[m][1:], patches[m][1:])


def _seen_patches(augment: str, seed: int = 0) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
    """Train the baseline on 3 x 3 patches whose band 0 numbers the pixels and band 1 names the sample;
    return the HS patches the model was trained on and its weights."""
    n = 64
    hs = np.empty((n, 2, 3, 3), dtype=np.float32)
    hs[:, 0] = np.arange(9, dtype=np.float32).reshape(3, 3)
    hs[:, 1] = np.arange(n, dtype=np.float32)[:, None, None]
    lidar = np.zeros((n, 1, 3, 3), dtype=np.float32)
    targets = np.arange(n) % 2
    avail = np.ones((n, 2), dtype=bool)
    config = ModelConfig(method="baseline", modalities=["hs", "lidar"], bands=[2, 1], num_classes=2, patch_size=3)
    torch.manual_seed(seed)
    model = build_model(config)
    seen: list[torch.Tensor] = []

    def record(module: torch.nn.Module, args: tuple) -> None:
        if module.training:
            seen.extend(args[0]["hs"].detach().cpu())

    model.register_forward_pre_hook(record)
    fit(model, {"hs": hs, "lidar": lidar}, avail, targets, {"hs": hs, "lidar": lidar}, avail, targets,
        Training(epochs=2, batch_size=16, augment=augment), seed, progress=False, device="cpu")
    return seen, {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_patch_training_sees_each_patch_under_a_symmetry_with_its_centre_in_place() -> None:
    views = [v.flatten().tolist() for v in _eight_views(torch.arange(9.0).reshape(3, 3))]
    plain, plain_weights = _seen_patches("none")
    turned, turned_weights = _seen_patches("dihedral")
    again, again_weights = _seen_patches("dihedral")
    assert len(turned) == len(plain) == 128  # 64 patches, 2 epochs
    assert all(p[0].flatten().tolist() == views[0] for p in plain)
    # the patches and their order are those drawn without augmentation (band 1 names the sample)
    assert [int(p[1, 0, 0]) for p in turned] == [int(p[1, 0, 0]) for p in plain]
    used = {views.index(p[0].flatten().tolist()) for p in turned}  # ValueError if one is no symmetry of the square
    assert len(used) == 8
    assert all(p[0, 1, 1] == 4 and torch.all(p[1] == p[1, 0, 0]) for p in turned)  # centre pixel in place, bands alike
    assert all(torch.equal(v, again_weights[k]) for k, v in turned_weights.items())  # the seed repeats it
    assert not all(torch.equal(v, plain_weights[k]) for k, v in turned_weights.items())
