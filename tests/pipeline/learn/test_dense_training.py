"""Dense training: coherent missing-modality masks, masked cross-entropy on crops, repeatable weights."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from models.dense import plan_canvas
from pipeline.config.catalog import Catalog, DenseCrops, Protocol, Training
from pipeline.learn.dense_training import (
    coherent_masks,
    crop_targets,
    epoch_crops,
    fit_dense,
    label_raster,
    region_patterns,
    scene_mask,
    told_origins,
    training_availability,
)
from pipeline.learn.training import model_config_for, prepare_training_data

MODALITIES = ["hs", "lidar"]


def test_coherent_masks_follow_the_protocol_fractions_in_regions() -> None:
    rng = np.random.default_rng(0)
    crops, blobs, size = 200, 8, 32
    patterns = region_patterns(Protocol(kind="eta", eta=0.5), crops * blobs, MODALITIES, 0, torch.Generator().manual_seed(0))
    masks = coherent_masks(patterns.reshape(crops, blobs, 2), size, 0.5, rng)
    codes = masks[:, 0].astype(int) + 2 * masks[:, 1].astype(int)
    fractions = np.bincount(codes.ravel(), minlength=4) / codes.size
    # eta 0.5 over two modalities: half complete, a quarter HS only, a quarter LiDAR only, never nothing
    np.testing.assert_allclose(fractions, [0.0, 0.25, 0.25, 0.5], atol=0.03)
    # coherent: neighbouring pixels share their pattern far more often than independent draws would (0.375)
    same = (codes[:, 1:, :] == codes[:, :-1, :]).mean()
    assert same > 0.85


def test_rates_protocol_gives_each_modality_its_rate() -> None:
    rng = np.random.default_rng(1)
    protocol = Protocol(kind="rates", rates={"hs": 1.0, "lidar": 0.3})
    patterns = region_patterns(protocol, 300 * 8, MODALITIES, 3, torch.Generator().manual_seed(0))
    masks = coherent_masks(patterns.reshape(300, 8, 2), 32, 0.5, rng)
    assert masks[:, 0].all()
    assert masks[:, 1].mean() == pytest.approx(0.3, abs=0.03)


def test_scene_mask_gives_each_modality_its_rate_in_coherent_regions() -> None:
    protocol = Protocol(kind="rates", rates={"hs": 0.6, "lidar": 1.0})
    mask = scene_mask(protocol, (200, 300), MODALITIES, seed=4)
    assert mask.shape == (2, 200, 300) and mask[1].all()
    assert mask[0].mean() == pytest.approx(0.6, abs=0.05)
    same = (mask[0, 1:] == mask[0, :-1]).mean()
    assert same > 0.85  # independent draws would agree 0.52 of the time
    np.testing.assert_array_equal(mask, scene_mask(protocol, (200, 300), MODALITIES, seed=4))
    assert not np.array_equal(mask, scene_mask(protocol, (200, 300), MODALITIES, seed=5))


def test_real_availability_is_anded_in_and_no_pixel_is_left_empty() -> None:
    real = torch.tensor([[[[True, True, False]], [[True, False, True]]]])  # (1, M=2, 1, 3)
    simulated = np.array([[[[False, True, False]], [[True, True, False]]]])
    got = training_availability(real, simulated)
    # pixel 0: LiDAR only; pixel 1: HS (the real one); pixel 2: the simulation leaves nothing -> real (LiDAR)
    assert got[0, :, 0].T.tolist() == [[False, True], [True, False], [False, True]]


def test_every_training_pixel_falls_in_one_crop_per_epoch() -> None:
    rng = np.random.default_rng(2)
    rows, cols = rng.integers(0, 100, 50), rng.integers(0, 300, 50)
    corners = epoch_crops(rows, cols, 32, rng)
    inside = (rows[:, None] >= corners[:, 0]) & (rows[:, None] < corners[:, 0] + 32) & \
             (cols[:, None] >= corners[:, 1]) & (cols[:, None] < corners[:, 1] + 32)
    assert (inside.sum(axis=1) == 1).all()
    assert inside.any(axis=0).all()  # no crop without a training pixel
    # with the model's window as step, corners sit half a window past the grid: the least canvas per crop
    on_grid = epoch_crops(rows, cols, 32, rng, step=8)
    assert (on_grid % 8 == 4).all()
    canvas = plan_canvas(torch.from_numpy(on_grid[:4]), 4, 32, 32, 8)
    assert (canvas.height, canvas.width) == (40, 40)


def test_with_context_each_labelled_pixel_counts_in_one_crop_only() -> None:
    rng = np.random.default_rng(3)
    rows, cols = rng.integers(0, 90, 40), rng.integers(0, 120, 40)
    targets = rng.integers(0, 5, 40)
    pad, cell, context = 48, 16, 8
    labels = np.pad(label_raster((90, 120), rows, cols, targets), pad, constant_values=-1)
    corners = epoch_crops(rows, cols, cell, rng, step=8) - context
    crops = crop_targets(labels, pad, corners, cell, context)
    assert crops.shape == (len(corners), cell, cell)
    assert (crops >= 0).sum() == len(rows)  # every training pixel once, none twice through a neighbour's context
    assert sorted(crops[crops >= 0].tolist()) == sorted(targets.tolist())


def test_grid_jitter_moves_a_pixel_through_its_window_from_epoch_to_epoch() -> None:
    rng = np.random.default_rng(5)
    rows, cols = rng.integers(0, 90, 40), rng.integers(0, 120, 40)
    positions = set()
    for _ in range(12):
        corners = epoch_crops(rows, cols, 32, rng, step=1)  # what fit_dense draws with grid_jitter
        origins = told_origins(corners, 8)
        assert (origins % 8 == 4).all() and ((origins - corners) >= 0).all() and ((origins - corners) < 8).all()
        # the window position the model sees for training pixel 0, in the crop that holds it
        holder = np.flatnonzero((corners[:, 0] <= rows[0]) & (rows[0] < corners[:, 0] + 32)
                                & (corners[:, 1] <= cols[0]) & (cols[0] < corners[:, 1] + 32))[0]
        seen = (np.array([rows[0], cols[0]]) - corners[holder] + origins[holder]) % 8
        positions.add(tuple(seen.tolist()))
    assert len(positions) >= 6  # without jitter it is always (rows[0] % 8, cols[0] % 8)


def _fit(catalog: Catalog, data, split, seed: int = 0, augment: str = "none", method: str | None = None) -> dict[str, torch.Tensor]:
    from models import build_model

    torch.manual_seed(seed)
    model = build_model(model_config_for(catalog, catalog.scenes[0], data.ds, method))
    training = Training(epochs=1, max_steps=2, augment=augment)
    fit_dense(model, data.ds, data.stats, split, training, Protocol(kind="eta", eta=0.5), seed, progress=False,
              precision="float32", settings=DenseCrops(crop_size=16, context=8, crops_per_batch=4, val_tile=256))
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}  # on CUDA too: compared with CPU weights


@pytest.mark.slow
def test_same_seed_same_weights_and_validation_labels_never_reach_the_loss(demo_catalog: Catalog) -> None:
    from models import build_model

    data = prepare_training_data(demo_catalog, demo_catalog.scenes[0], 0)
    shuffled = copy.deepcopy(data.split)
    shuffled.val_targets = np.random.default_rng(9).permutation(shuffled.val_targets)
    first = _fit(demo_catalog, data, data.split)
    again = _fit(demo_catalog, data, data.split)
    other_val = _fit(demo_catalog, data, shuffled)
    assert all(torch.equal(v, again[k]) for k, v in first.items())
    assert all(torch.equal(v, other_val[k]) for k, v in first.items())
    torch.manual_seed(0)
    untrained = build_model(model_config_for(demo_catalog, demo_catalog.scenes[0], data.ds)).state_dict()
    assert not all(torch.equal(v, untrained[k]) for k, v in first.items())  # the steps did train


@pytest.mark.slow
def test_dihedral_augmentation_trains_other_weights_and_repeats_with_the_seed(demo_catalog: Catalog) -> None:
    data = prepare_training_data(demo_catalog, demo_catalog.scenes[0], 0)
    plain = _fit(demo_catalog, data, data.split)
    turned = _fit(demo_catalog, data, data.split, augment="dihedral")
    again = _fit(demo_catalog, data, data.split, augment="dihedral")
    assert all(torch.equal(v, again[k]) for k, v in turned.items())
    assert not all(torch.equal(v, plain[k]) for k, v in turned.items())


@pytest.mark.slow
def test_mmp_trains_densely_its_projection_included_and_repeats_with_the_seed(demo_catalog: Catalog) -> None:
    from models import build_model

    data = prepare_training_data(demo_catalog, demo_catalog.scenes[0], 0)
    first = _fit(demo_catalog, data, data.split, augment="dihedral", method="mmp")
    again = _fit(demo_catalog, data, data.split, augment="dihedral", method="mmp")
    assert all(torch.equal(v, again[k]) for k, v in first.items())
    torch.manual_seed(0)
    untrained = build_model(model_config_for(demo_catalog, demo_catalog.scenes[0], data.ds, "mmp")).state_dict()
    # the projection of missing tokens trained (the protocol's withheld pixels gave it targets), and so did the head
    for name in ("projector.mlps.0.1.weight", "projector.mlps.1.1.weight", "head.weight"):
        assert not torch.equal(first[name], untrained[name]), name


@pytest.mark.slow
def test_lvpcnet_trains_both_stages_densely_and_repeats_with_the_seed(demo_catalog: Catalog) -> None:
    from models import build_model

    data = prepare_training_data(demo_catalog, demo_catalog.scenes[0], 0)
    first = _fit(demo_catalog, data, data.split, method="lvpcnet")
    again = _fit(demo_catalog, data, data.split, method="lvpcnet")
    assert all(torch.equal(v, again[k]) for k, v in first.items())
    torch.manual_seed(0)
    untrained = build_model(model_config_for(demo_catalog, demo_catalog.scenes[0], data.ds, "lvpcnet")).state_dict()
    # stage align trained the encoders and the head, stage prompt the prompts and the compensation convolutions
    for name in ("shared.blocks.0.mlp.c_fc.weight", "head.weight", "prompts.lidar", "convs.lidar.hs.weight"):
        assert not torch.equal(first[name], untrained[name]), name


def test_the_schedule_runs_every_epoch_and_ends_at_zero_whatever_cells_the_epochs_draw(demo_catalog: Catalog) -> None:
    from models import build_model

    data = prepare_training_data(demo_catalog, demo_catalog.scenes[0], 0)
    torch.manual_seed(0)
    model = build_model(model_config_for(demo_catalog, demo_catalog.scenes[0], data.ds))
    training = Training(epochs=4)
    # one crop a step: each epoch's steps are the cells its random grid offset puts a training pixel in
    settings = DenseCrops(crop_size=16, context=0, crops_per_batch=1, val_tile=256)
    history = fit_dense(model, data.ds, data.stats, data.split, training, Protocol(kind="none"), 0, progress=False,
                        precision="float32", settings=settings)
    steps = np.diff([0] + [h["step"] for h in history])
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]  # no epoch cut short by an estimated step count
    assert len(set(steps.tolist())) > 1  # the epochs did draw different numbers of cells
    assert history[-1]["lr"] == 0.0  # annealed to zero on the last batch of the last epoch


@pytest.mark.slow
def test_dense_training_learns_the_small_demo(demo_catalog: Catalog) -> None:
    from models import build_model
    from pipeline.learn.dense_training import SceneArrays, predict_dense_at

    scene = demo_catalog.scenes[0]
    data = prepare_training_data(demo_catalog, scene, 0)
    torch.manual_seed(0)
    model = build_model(model_config_for(demo_catalog, scene, data.ds))
    training = Training(epochs=8)
    settings = DenseCrops(crop_size=16, crops_per_batch=8)
    fit_dense(model, data.ds, data.stats, data.split, training, Protocol(kind="none"), 0, progress=False, settings=settings)
    split = data.split
    arrays = SceneArrays.read(data.ds, data.modalities, data.stats, model.receptive_radius)
    probs = predict_dense_at(model, arrays, split.test_rows, split.test_cols)
    oa = float((probs.argmax(1) == split.test_targets).mean())
    chance = np.bincount(split.test_targets).max() / len(split.test_targets)
    assert oa > chance + 0.25, f"held-out OA {oa:.3f}, majority class {chance:.3f}"


def test_a_schedule_shorter_than_the_measured_one_is_warned_about() -> None:
    from pipeline.learn.dense_training import MEASURED_EPOCHS, short_schedule_warning

    message = short_schedule_warning(15, None)
    assert message is not None and "training.epochs is 15" in message and f"{MEASURED_EPOCHS} epochs" in message
    assert short_schedule_warning(MEASURED_EPOCHS, None) is None and short_schedule_warning(60, None) is None
    assert short_schedule_warning(1, 2) is None  # max_steps: a deliberate short run


def test_auto_trains_densely_only_the_methods_whose_dense_path_held_accuracy() -> None:
    from models.registry import method_class
    from pipeline.learn.dense_training import trains_dense

    mamol, baseline, mmp = method_class("mamol"), method_class("baseline"), method_class("mmp")
    lvpcnet = method_class("lvpcnet")
    patch_only = type("PatchOnly", (mmp,), {"supports_dense": False})  # a method without the dense path
    # MaMOL's dense path held the patch path's accuracy (docs/accuracy.md): auto trains it densely; the baseline's
    # dense accuracy trained whole is not measured row by row, so auto keeps it on patches, as MMP and LVPCnet
    assert trains_dense("auto", mamol, frozen=False) and not trains_dense("auto", baseline, frozen=False)
    assert not trains_dense("auto", mmp, frozen=False) and not trains_dense("auto", lvpcnet, frozen=False)
    # on a frozen backbone the baseline's (the probe's) and MMP's dense paths held it: auto trains them densely
    assert trains_dense("auto", baseline, frozen=True) and trains_dense("auto", mamol, frozen=True)
    assert trains_dense("auto", mmp, frozen=True) and not trains_dense("auto", lvpcnet, frozen=True)
    assert not trains_dense("auto", type("NoDense", (patch_only,), {"frozen_dense_by_default": True}), frozen=True)
    held = type("Held", (baseline,), {"dense_by_default": True})  # a method whose dense path would have held it
    assert trains_dense("auto", held, frozen=False)
    assert not trains_dense("auto", type("NoDense", (patch_only,), {"dense_by_default": True}), frozen=False)
    for frozen in (False, True):
        assert all(trains_dense("dense", cls, frozen=frozen) for cls in (mamol, baseline, mmp, lvpcnet))
        assert not trains_dense("dense", patch_only, frozen=frozen)
        assert not any(trains_dense("patch", cls, frozen=frozen) for cls in (mamol, baseline, mmp, lvpcnet, held))


def test_dense_training_says_it_does_not_follow_selection_best(demo_catalog: Catalog, caplog: pytest.LogCaptureFixture) -> None:
    from models import build_model

    data = prepare_training_data(demo_catalog, demo_catalog.scenes[0], 0)
    model = build_model(model_config_for(demo_catalog, demo_catalog.scenes[0], data.ds))
    settings = DenseCrops(crop_size=16, context=0, crops_per_batch=4, val_tile=256)
    with caplog.at_level("WARNING", logger="pipeline.learn.dense_training"):
        fit_dense(model, data.ds, data.stats, data.split, Training(epochs=1, max_steps=1, selection="best"),
                  Protocol(kind="none"), 0, progress=False, precision="float32", settings=settings)
    assert any("selection is 'best'" in r.getMessage() and "keeps the last weights" in r.getMessage() for r in caplog.records)
