"""MMP: projected tokens exactly where a modality is missing, the masking hook, the alignment loss."""

from __future__ import annotations

import pytest
import torch

from models import build_model, dense, load_checkpoint, save_checkpoint
from models.mmp import MMP, with_unmasked_copies

THREE = (["hs", "sar", "dsm"], [30, 4, 1])


def test_projected_tokens_are_used_exactly_where_a_modality_is_missing(make_config, make_batch):
    torch.manual_seed(0)
    config = make_config("mmp")
    model = build_model(config).eval()
    assert isinstance(model, MMP)
    inputs = make_batch(config, batch=3)
    available = torch.tensor([[True, True], [True, False], [False, True]])
    with torch.no_grad():
        tokens, projected, replaced = model.projected_tokens(inputs, available)
        real = model.projection(inputs, torch.ones_like(available))
    assert torch.equal(replaced, ~available)
    n = config.patch_size**2
    for b in range(3):
        for i in range(2):
            part = slice(i * n, (i + 1) * n)
            if available[b, i]:
                assert torch.equal(tokens[b, part], real[b, part])
                assert not projected[b, i].any()
            else:
                assert torch.equal(tokens[b, part], projected[b, i])
                assert projected[b, i].abs().sum() > 0
                assert not torch.allclose(tokens[b, part], real[b, part])


def test_projection_reads_the_available_modality_only(make_config, make_batch):
    torch.manual_seed(0)
    config = make_config("mmp")
    model = build_model(config).eval()
    inputs = make_batch(config, batch=2)
    lidar_missing = torch.tensor([[True, False]] * 2)
    other_hs = {**inputs, "hs": inputs["hs"] + 1.0}
    other_lidar = {**inputs, "lidar": torch.full_like(inputs["lidar"], 1e6)}
    with torch.no_grad():
        base = model.projected_tokens(inputs, lidar_missing)[1][:, 1]
        assert not torch.allclose(base, model.projected_tokens(other_hs, lidar_missing)[1][:, 1])
        assert torch.equal(base, model.projected_tokens(other_lidar, lidar_missing)[1][:, 1])


@pytest.mark.parametrize("three", [False, True])
def test_values_of_missing_modalities_are_ignored(three, make_config, make_batch):
    torch.manual_seed(0)
    config = make_config("mmp", THREE) if three else make_config("mmp")
    model = build_model(config).eval()
    inputs = make_batch(config, batch=4)
    m = len(config.modalities)
    available = torch.ones(4, m, dtype=torch.bool)
    available[1, 0] = available[2, m - 1] = False
    available[3, : m - 1] = False  # only the last modality left
    garbage = {name: x.clone() for name, x in inputs.items()}
    for b, i in (~available).nonzero().tolist():
        garbage[config.modalities[i]][b] = float("nan") if b % 2 else 1e4
    with torch.no_grad():
        assert torch.equal(model(inputs, available), model(garbage, available))


def test_masking_keeps_one_and_only_masked_modalities_get_an_alignment_target(make_config, make_batch):
    torch.manual_seed(0)
    model = build_model(make_config("mmp")).train()
    config = model.config
    inputs = make_batch(config, batch=64)
    generator = torch.Generator().manual_seed(0)
    complete = torch.ones(64, 2, dtype=torch.bool)
    masked = model.training_availability(complete, generator)
    assert masked.any(dim=1).all() and not torch.equal(masked, complete)
    assert 0.2 < (~masked).float().mean() < 0.5  # p = 0.5 per modality, at least one kept: 1/3 dropped
    parts = model.training_loss(inputs, masked, torch.zeros(64, dtype=torch.long), "main")
    assert parts["align"] > 0
    # LiDAR missing in the data itself: nothing to mask, no target, no alignment loss.
    hs_only = torch.tensor([[True, False]] * 64)
    kept = model.training_availability(hs_only, generator)
    assert torch.equal(kept, hs_only)
    parts = model.training_loss(inputs, kept, torch.zeros(64, dtype=torch.long), "main")
    assert parts["align"] == 0 and torch.isclose(parts["loss"], parts["ce"])


def correlated_batch(config, batch: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """HS random; LiDAR a fixed function of HS, so its tokens can be projected from HS."""
    p = config.patch_size
    hs = torch.randn(batch, config.bands[0], p, p, generator=generator)
    lidar = torch.stack([hs[:, :10].mean(dim=1), hs[:, 10:20].mean(dim=1) - hs[:, 30]], dim=1)
    return {"hs": hs, "lidar": lidar}


def held_out_alignment(model: MMP, inputs: dict[str, torch.Tensor]) -> float:
    """The alignment loss on a fixed batch under a fixed mask (same seed each time)."""
    n = inputs["hs"].shape[0]
    available = model.training_availability(torch.ones(n, 2, dtype=torch.bool), torch.Generator().manual_seed(1))
    with torch.no_grad():
        return float(model.training_loss(inputs, available, torch.zeros(n, dtype=torch.long), "main")["align"])


def test_alignment_loss_falls_over_a_short_training_run(make_config):
    torch.manual_seed(0)
    model = build_model(make_config("mmp", patch_size=3)).train()
    generator = torch.Generator().manual_seed(0)
    held_out = correlated_batch(model.config, 64, generator)
    before = held_out_alignment(model, held_out)
    optimiser = torch.optim.AdamW(model.configure_stage("main"), lr=2e-3)
    for _ in range(40):
        inputs = correlated_batch(model.config, 16, generator)
        targets = (inputs["hs"][:, 0, 1, 1] > 0).long()
        available = model.training_availability(torch.ones(16, 2, dtype=torch.bool), generator)
        parts = model.training_loss(inputs, available, targets, "main")
        optimiser.zero_grad()
        parts["loss"].backward()
        optimiser.step()
    after = held_out_alignment(model, held_out)
    assert before > 0 and after < 0.8 * before, (before, after)


def test_bfloat16_autocast_and_checkpoint_round_trip(make_config, make_batch, tmp_path):
    torch.manual_seed(0)
    config = make_config("mmp", THREE, num_aggregate_tokens=4)
    model = build_model(config).eval()
    inputs = make_batch(config, batch=3)
    available = torch.tensor([[True, True, True], [False, True, False], [True, False, True]])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(inputs, available)
    assert low.dtype == torch.bfloat16 and torch.isfinite(low.float()).all()
    save_checkpoint(model, tmp_path / "ckpt")
    loaded, _ = load_checkpoint(tmp_path / "ckpt")
    assert loaded.projector.aggregates.shape == (3, 4, model.backbone.width)
    with torch.no_grad():
        assert torch.equal(model(inputs, available), loaded(inputs, available))


def test_keep_complete_must_be_a_switch(make_config):
    with pytest.raises(ValueError, match="keep_complete must be true or false, got 'false'"):
        build_model(make_config("mmp", keep_complete="false"))


def test_mmp_needs_two_modalities():
    from models import ModelConfig

    with pytest.raises(ValueError, match="two or more"):
        build_model(ModelConfig(method="mmp", modalities=["hs"], bands=[4], num_classes=3, patch_size=3))



def test_mask_leaves_samples_a_protocol_made_incomplete_alone(make_config):
    model = build_model(make_config("mmp"))
    available = torch.tensor([[True, True], [True, False], [False, True]]).repeat(400, 1)
    masked = model.training_availability(available, torch.Generator().manual_seed(0))
    incomplete = ~available.all(dim=1)
    assert torch.equal(masked[incomplete], available[incomplete])  # no second drop on the protocol's
    assert not masked[~incomplete].all()  # complete samples are still masked


def test_unmasked_copies_append_each_masked_sample_once_under_its_real_availability(make_config, make_batch):
    config = make_config("mmp")
    inputs = make_batch(config, batch=4)
    real = torch.tensor([[True, True], [True, True], [True, False], [True, True]])
    available = torch.tensor([[True, True], [False, True], [True, False], [True, False]])  # rows 1 and 3 masked
    targets = torch.tensor([0, 1, 2, 3])
    grown, avail, real_grown, tgt = with_unmasked_copies(inputs, available, real, targets)
    for name in config.modalities:
        assert torch.equal(grown[name][:4], inputs[name]) and torch.equal(grown[name][4:], inputs[name][[1, 3]])
    assert torch.equal(avail, torch.cat([available, real[[1, 3]]]))
    assert torch.equal(real_grown, torch.cat([real, real[[1, 3]]])) and torch.equal(tgt, torch.tensor([0, 1, 2, 3, 1, 3]))
    unmasked = with_unmasked_copies(inputs, real, real, targets)  # nothing masked: the batch as it was
    assert unmasked[0] is inputs and unmasked[1] is real


@pytest.mark.parametrize("keep_complete", [True, False])
def test_keep_complete_trains_the_head_on_a_masked_sample_as_it_is_too(make_config, make_batch, keep_complete):
    torch.manual_seed(0)
    model = build_model(make_config("mmp", keep_complete=keep_complete)).eval()
    inputs = make_batch(model.config, batch=32)
    targets = torch.arange(32) % model.config.num_classes
    complete = torch.ones(32, 2, dtype=torch.bool)
    masked = model.training_availability(complete, torch.Generator().manual_seed(0))
    rows = (~masked).any(dim=1).nonzero(as_tuple=True)[0]
    assert 0 < rows.numel() < 32
    with torch.no_grad():
        parts = model.training_loss(inputs, masked, targets, "main")
        logits, tgt = model(inputs, masked), targets
        if keep_complete:
            copies = {name: x[rows] for name, x in inputs.items()}
            logits, tgt = torch.cat([logits, model(copies, complete[rows])]), torch.cat([targets, targets[rows]])
    assert torch.allclose(parts["ce"], torch.nn.functional.cross_entropy(logits, tgt), atol=1e-6)
    assert parts["align"] > 0  # the masked copies still train the projection


# -- the dense path ---------------------------------------------------------------------------------------


def dense_crop(config, height: int, width: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {name: torch.randn(1, c, height, width, generator=g) for name, c in zip(config.modalities, config.bands)}


def test_dense_tokens_are_projected_exactly_where_a_pixel_misses_a_modality_another_has(make_config):
    torch.manual_seed(0)
    model = build_model(make_config("mmp", window_size=4)).eval()
    inputs = dense_crop(model.config, 12, 16)
    available = torch.ones(1, 2, 12, 16, dtype=torch.bool)
    available[0, 0, 2:6, 3:9] = False  # a cloud over the HS
    available[0, 1, :, 12:] = False  # a LiDAR strip never flown
    available[0, :, 9:, 12:] = False  # nothing at all
    canvas = model.dense_canvas(inputs, available)
    with torch.no_grad():
        plain = model.projection.dense(inputs, available, canvas)
        tokens, replaced = model.dense_projected_tokens(inputs, available, canvas)
    present = dense.place(available, canvas, False).permute(0, 2, 3, 1)
    expected = ~present & present.any(dim=-1, keepdim=True)
    assert torch.equal(replaced, expected) and int(replaced.sum()) == 24 + 9 * 4
    assert torch.equal(tokens[~replaced], plain[~replaced])  # real tokens, and the missing token where nothing is
    assert (tokens[replaced] - plain[replaced]).abs().sum(dim=-1).gt(0).all()


def test_a_dense_projection_is_the_patch_projection_of_the_patch_around_the_pixel(make_config):
    # with the whole 5 x 5 neighbourhood of HS present, LiDAR's T' at the pixel is the patch path's projection of
    # that neighbourhood's tokens, at the patch's centre
    torch.manual_seed(0)
    model = build_model(make_config("mmp", window_size=4)).eval()
    inputs = dense_crop(model.config, 12, 12, seed=1)
    available = torch.ones(1, 2, 12, 12, dtype=torch.bool)
    available[0, 1, 5, 6] = False
    available[0, 1, 3, 3] = available[0, 0, 3, 2] = False  # this pixel's HS neighbourhood has a hole
    canvas = model.dense_canvas(inputs, available)
    top, left = canvas.top[0], canvas.left[0]
    with torch.no_grad():
        plain = model.projection.dense(inputs, available, canvas)[0]
        tokens, _ = model.dense_projected_tokens(inputs, available, canvas)
        for (r, c), keep in [((5, 6), slice(None)), ((3, 3), [i for i in range(25) if i != 11])]:
            rows, cols = slice(top + r - 2, top + r + 3), slice(left + c - 2, left + c + 3)
            hs = plain[rows, cols, 0].reshape(1, 25, -1)[:, keep]
            lidar = torch.zeros_like(hs)
            patch = model.projector([hs, lidar], torch.tensor([[True, False]]), target=1)
            centre = keep.index(12) if isinstance(keep, list) else 12
            torch.testing.assert_close(tokens[0, top + r, left + c, 1], patch[0, centre], atol=1e-5, rtol=1e-4)


def test_the_dense_loss_aligns_the_withheld_tokens_the_scene_has(make_config):
    torch.manual_seed(0)
    model = build_model(make_config("mmp", window_size=4)).train()
    inputs = dense_crop(model.config, 16, 16, seed=2)
    real = torch.ones(1, 2, 16, 16, dtype=torch.bool)
    real[0, 1, :, :4] = False  # a LiDAR strip the scene never had: no target there
    shown = real.clone()
    shown[0, 0, 8:, :] = False  # the training mask withholds HS over the lower half
    targets = torch.full((1, 16, 16), -1)
    targets[0, 4, 4] = targets[0, 12, 9] = 1
    parts = model.dense_training_loss(inputs, shown, real, targets, None, 0, "main")
    canvas = model.dense_canvas(inputs, shown)
    tokens, replaced = model.dense_projected_tokens(inputs, shown, canvas)
    withheld = replaced & dense.place(real, canvas, False).permute(0, 2, 3, 1)
    assert int(withheld.sum()) == 8 * 16 - 8 * 4 + 0  # HS withheld where LiDAR is there: rows 8-15, cols 4-15
    with torch.no_grad():
        truth = model.projection.dense(inputs, real, canvas)
    expected = torch.nn.functional.smooth_l1_loss(tokens[withheld], truth[withheld])
    torch.testing.assert_close(parts["align"], expected.detach())
    torch.testing.assert_close(parts["loss"], parts["ce"] + parts["align"])
    # nothing withheld: the loss is the masked cross-entropy alone, that of forward_dense
    alone = model.dense_training_loss(inputs, real, real, targets, None, 0, "main")
    assert alone["align"] == 0
    ce = torch.nn.functional.cross_entropy(model.forward_dense(inputs, real), targets, ignore_index=-1)
    torch.testing.assert_close(alone["loss"], ce)
    parts["loss"].backward()
    assert model.projector.mlps[0][1].weight.grad.abs().sum() > 0  # the projection of HS trains


def test_the_dense_path_masks_regions_itself_only_where_the_protocol_withheld_nothing(make_config):
    model = build_model(make_config("mmp"))
    generator = torch.Generator().manual_seed(0)
    complete = torch.ones(600, 2, dtype=torch.bool)
    masked = model.dense_training_patterns(complete, generator)
    assert masked.any(dim=1).all() and 0.2 < (~masked).float().mean() < 0.5  # MMP's drop, one modality kept
    protocol = complete.clone()
    protocol[::3, 1] = False  # a protocol row that leaves a third incomplete
    assert torch.equal(model.dense_training_patterns(protocol, generator), protocol)
