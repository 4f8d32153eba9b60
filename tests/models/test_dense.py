"""The dense path: windowed attention over pixel tokens, anchored to the scene grid (models.dense)."""

from __future__ import annotations

import re

import pytest
import torch

from models import build_model, method_class
from models.base import MissingModalityClassifier
from models.classifier import PatchTransformerClassifier
from models.dense import block_shift, needed_windows, place, plan_canvas, receptive_radius
from models.projection import ModalityProjection

DENSE_METHODS = ["baseline", "mamol", "mmp", "lvpcnet"]
PLAIN_TOKEN_METHODS = ["baseline", "mamol"]
"""Dense methods whose missing tokens are the plain missing token (MMP projects them: tests/models/test_mmp.py)."""


def _model(make_config, method: str, **params) -> PatchTransformerClassifier:
    torch.manual_seed(0)
    model = build_model(make_config(method, **params)).eval()
    assert model.supports_dense
    return model  # type: ignore[return-value]  # LVPCnet has the dense interface without the shared classifier


def _crop(model: MissingModalityClassifier, height: int, width: int, seed: int = 0, batch: int = 1):
    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    inputs = {m: torch.randn(batch, c, height, width, generator=g) for m, c in zip(cfg.modalities, cfg.bands)}
    available = torch.rand(batch, len(cfg.modalities), height, width, generator=g) > 0.3
    return inputs, available


def _reference_features(model: PatchTransformerClassifier, inputs, available, origin: tuple[int, int]) -> torch.Tensor:
    """Per-pixel features by explicit loops over scene-grid windows, block by block (no canvas, no partition)."""
    w = model.window_size
    assert w is not None
    proj = model.projection
    _, m_count, height, width = available.shape
    margin = model.receptive_radius + w  # beyond the radius nothing reaches the compared pixels
    r0 = (origin[0] - margin) // w * w
    c0 = (origin[1] - margin) // w * w
    rows = -(-(origin[0] + height + margin - r0) // w) * w
    cols = -(-(origin[1] + width + margin - c0) // w) * w
    tokens = torch.zeros(rows, cols, m_count, model.backbone.width)
    avail = torch.zeros(rows, cols, m_count, dtype=torch.bool)
    top, left = origin[0] - r0, origin[1] - c0
    scene_r = torch.arange(height).view(-1, 1) + origin[0]
    scene_c = torch.arange(width).view(1, -1) + origin[1]
    position = proj.window_position[(scene_r % w) * w + scene_c % w]  # (H, W, width)
    for i, name in enumerate(proj.modalities):
        token = proj.band_maps[name](inputs[name][0].permute(1, 2, 0)) + proj.modality[i] + position
        here = available[0, i]
        tokens[top : top + height, left : left + width, i] = torch.where(here[..., None], token, 0.0)
        avail[top : top + height, left : left + width, i] = here
    state = model.backbone.ln_pre(tokens)
    for index, block in enumerate(model.backbone.blocks):
        shift = w // 2 if index % 2 else 0
        new = state.clone()
        corners = [(wr, wc) for wr in range(shift, rows - w + 1, w) for wc in range(shift, cols - w + 1, w)]
        seqs = torch.stack([state[wr : wr + w, wc : wc + w].reshape(-1, state.shape[-1]) for wr, wc in corners])
        pix = torch.stack([avail[wr : wr + w, wc : wc + w] for wr, wc in corners])  # (windows, w, w, M)
        token_avail = pix.unsqueeze(3).expand(-1, -1, -1, m_count, -1).reshape(len(corners), -1, m_count)
        out = model.run_block(index, block, seqs, model.block_context(token_avail))
        for (wr, wc), window_out in zip(corners, out):
            new[wr : wr + w, wc : wc + w] = window_out.reshape(w, w, m_count, -1)
        state = new
    return model.backbone.ln_post(state[top : top + height, left : left + width]).permute(2, 3, 0, 1).unsqueeze(0)


@pytest.mark.parametrize("method", PLAIN_TOKEN_METHODS)
def test_dense_forward_equals_a_per_window_reference(make_config, method: str) -> None:
    # Pixels at least the receptive radius inside the crop have full context: there the dense
    # forward must equal explicit per-window loops over the scene grid (crop in an unavailable plane).
    # No local convolution here (the reference is the windows alone; the kernel has its own test below).
    model = _model(make_config, method, window_size=4, local_kernel=0)
    radius = model.receptive_radius
    height, width = 2 * radius + 5, 2 * radius + 7
    inputs, available = _crop(model, height, width)
    origin = (5, 22)  # not on the window grid
    with torch.no_grad():
        got = model.dense_features(inputs, available, torch.tensor([origin]))
        expected = _reference_features(model, inputs, available, origin)
        logits = model.forward_dense(inputs, available, torch.tensor([origin]))
    assert got.shape == (1, 2, model.backbone.width, height, width)
    inner = (..., slice(radius, height - radius), slice(radius, width - radius))
    torch.testing.assert_close(got[inner], expected[inner], atol=2e-5, rtol=1e-4)
    # the readout: each modality's tokens averaged over the pixel's P x P neighbourhood, then the head
    k = model.config.patch_size // 2
    assert model.readout_radius == k and model.receptive_radius == receptive_radius(model.backbone.layers, 4) + k
    for r, c in [(k, k), (height // 2, width // 2), (height - 1 - k, width - 1 - k)]:
        mean = got[0, :, :, r - k : r + k + 1, c - k : c + k + 1].mean(dim=(-1, -2)).reshape(-1)
        torch.testing.assert_close(logits[0, :, r, c], model.head(mean), atol=1e-5, rtol=1e-4)
    pixel = _model(make_config, method, window_size=4, local_kernel=0, dense_readout="pixel")
    with torch.no_grad():
        own = pixel.dense_features(inputs, available, torch.tensor([origin]))
        head = pixel.head(own.permute(0, 3, 4, 1, 2).reshape(1, height, width, -1)).permute(0, 3, 1, 2)
        torch.testing.assert_close(pixel.forward_dense(inputs, available, torch.tensor([origin])), head)
    assert pixel.receptive_radius == receptive_radius(pixel.backbone.layers, 4)


def test_receptive_radius_is_bounded_by_the_window_grid() -> None:
    assert receptive_radius(1, 8) == 7  # one unshifted window: its far corner
    assert receptive_radius(2, 8) == 11  # a shifted block adds half a window
    assert receptive_radius(4, 8) == 19
    assert all(receptive_radius(d, 8) <= d * 4 + 4 for d in range(1, 13))


@pytest.mark.parametrize("method", DENSE_METHODS)
def test_a_pixels_logits_ignore_pixels_beyond_the_receptive_radius(make_config, method: str) -> None:
    model = _model(make_config, method, window_size=4)
    radius = model.receptive_radius
    size = 2 * radius + 9
    inputs, available = _crop(model, size, size, seed=1)
    centre = size // 2
    far = torch.ones(size, size, dtype=torch.bool)
    far[centre - radius : centre + radius + 1, centre - radius : centre + radius + 1] = False
    changed = {m: torch.where(far, torch.randn_like(v) * 5, v) for m, v in inputs.items()}
    changed_avail = torch.where(far, ~available, available)
    origin = torch.tensor([[3, 7]])
    with torch.no_grad():
        before = model.forward_dense(inputs, available, origin)[0, :, centre, centre]
        after = model.forward_dense(changed, changed_avail, origin)[0, :, centre, centre]
        # a neighbour inside the radius does change it (the test can fail)
        near = {m: v.clone() for m, v in inputs.items()}
        near[model.config.modalities[0]][..., centre + 1, centre] += 3.0
        moved = model.forward_dense(near, available | True, origin)[0, :, centre, centre]
    assert torch.equal(before, after)
    assert not torch.equal(before, moved)


@pytest.mark.parametrize("method", DENSE_METHODS)
def test_a_crop_with_a_halo_gives_the_scene_logits_bit_for_bit(make_config, method: str) -> None:
    model = _model(make_config, method, window_size=4)
    radius = model.receptive_radius
    inputs, available = _crop(model, 60, 70, seed=2)
    with torch.no_grad():
        whole = model.forward_dense(inputs, available, torch.tensor([[0, 0]]))
        r0, c0, h, w = 29, 31, 6, 9  # a tile off the window grid
        sl = (slice(None), slice(None), slice(r0 - radius, r0 + h + radius), slice(c0 - radius, c0 + w + radius))
        tile = model.forward_dense({m: v[sl] for m, v in inputs.items()}, available[sl], torch.tensor([[r0 - radius, c0 - radius]]))
    assert torch.equal(tile[..., radius : radius + h, radius : radius + w], whole[..., r0 : r0 + h, c0 : c0 + w])


@pytest.mark.parametrize("method", DENSE_METHODS)
def test_missing_tokens_cannot_leak_nan(make_config, method: str) -> None:
    model = _model(make_config, method)
    inputs, available = _crop(model, 16, 16, seed=3, batch=2)
    available[:, 1, 4:12, 4:12] = False  # a LiDAR gap
    gap = ~available[:, 1:2]
    nan = {m: v.clone() for m, v in inputs.items()}
    zero = {m: v.clone() for m, v in inputs.items()}
    nan["lidar"] = torch.where(gap, torch.nan, inputs["lidar"])
    zero["lidar"] = torch.where(gap, 0.0, inputs["lidar"])
    origin = torch.tensor([[0, 0], [8, 8]])
    with torch.no_grad():
        logits = model.forward_dense(nan, available, origin)
        assert torch.isfinite(logits).all()
        assert torch.equal(logits, model.forward_dense(zero, available, origin))
    nan["lidar"].requires_grad_(True)
    model.forward_dense(nan, available, origin).sum().backward()
    assert torch.isfinite(nan["lidar"].grad).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_every_method_has_the_dense_path_and_one_without_it_says_so(make_config) -> None:
    from models.registry import available_methods

    assert sorted(available_methods()) == sorted(DENSE_METHODS)
    assert all(build_model(make_config(method)).supports_dense for method in DENSE_METHODS)
    patch_only = MissingModalityClassifier(make_config("baseline"))  # the interface's defaults: no dense path
    assert not patch_only.supports_dense
    inputs, available = _crop(_model(make_config, "baseline"), 8, 8)
    with pytest.raises(NotImplementedError, match="dense"):
        patch_only.forward_dense(inputs, available)
    with pytest.raises(NotImplementedError, match="dense"):
        _ = patch_only.receptive_radius


def test_window_size_must_be_even(make_config) -> None:
    with pytest.raises(ValueError, match="window_size"):
        build_model(make_config("baseline", window_size=5))


def test_the_dense_path_leaves_the_patch_path_initialisation_alone(make_config, make_batch) -> None:
    # the window position embedding is drawn from a forked RNG: every other parameter is as before
    torch.manual_seed(0)
    dense = build_model(make_config("mamol", window_size=4))
    torch.manual_seed(0)
    other = build_model(make_config("mamol", window_size=8))
    shared = {k: v for k, v in dense.state_dict().items() if "window_position" not in k}
    assert all(torch.equal(v, other.state_dict()[k]) for k, v in shared.items())
    batch = make_batch(dense.config)
    available = torch.ones(4, 2, dtype=torch.bool)
    with torch.no_grad():
        assert torch.equal(dense.eval()(batch, available), other.eval()(batch, available))


@pytest.mark.parametrize("method", DENSE_METHODS)
def test_running_blocks_a_few_windows_at_a_time_changes_nothing(make_config, method: str) -> None:
    # one window row per call (and several crops) against the whole canvas in one call, in inference and in training
    model = _model(make_config, method, window_size=4)
    inputs, available = _crop(model, 23, 29, seed=4, batch=2)
    origin = torch.tensor([[3, 7], [10, 1]])
    results = {}
    for chunk in (1, 10**9):
        model.dense_chunk_tokens = chunk
        model.zero_grad(set_to_none=True)
        logits = model.forward_dense(inputs, available, origin)
        logits.square().mean().backward()
        results[chunk] = (logits.detach(), model.projection.window_position.grad.clone())
        with torch.no_grad():
            results[chunk] += (model.forward_dense(inputs, available, origin),)
    for small, whole in zip(results[1], results[10**9]):
        torch.testing.assert_close(small, whole, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(results[1][0], results[1][2])


@pytest.mark.parametrize("method", DENSE_METHODS)
@pytest.mark.parametrize("readout", ["patch_mean", "pixel"])
def test_a_margin_gives_the_interior_of_the_whole_crop_bit_for_bit(make_config, method: str, readout: str) -> None:
    # margins below, at and past the readout radius; two crops off the window grid; inference and gradients
    model = _model(make_config, method, window_size=4, dense_readout=readout)
    inputs, available = _crop(model, 37, 41, seed=6, batch=2)
    origin = torch.tensor([[5, 2], [-3, 9]])
    with torch.no_grad():
        whole = model.forward_dense(inputs, available, origin)
    for margin in (1, 2, 7, model.receptive_radius):
        with torch.no_grad():
            inner = model.forward_dense(inputs, available, origin, margin)
        assert inner.shape[-2:] == (37 - 2 * margin, 41 - 2 * margin)
        assert torch.equal(inner, whole[..., margin : 37 - margin, margin : 41 - margin])
    model.zero_grad(set_to_none=True)
    model.forward_dense(inputs, available, origin, 7).square().mean().backward()
    trimmed = model.projection.window_position.grad.clone()
    model.zero_grad(set_to_none=True)
    model.forward_dense(inputs, available, origin)[..., 7:30, 7:34].square().mean().backward()
    torch.testing.assert_close(trimmed, model.projection.window_position.grad, atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="margin"):
        model.forward_dense(inputs, available, origin, 19)


def test_blocks_compute_only_the_windows_the_wanted_pixels_depend_on() -> None:
    window, depth, size = 8, 4, 200
    radius = receptive_radius(depth, window)
    for pixel in (4, 60, 100, 131):
        spans = needed_windows(pixel, pixel + 1, size, depth, window)
        assert spans[-1].stop - spans[-1].start == 1  # the last block: the pixel's own window
        shift = block_shift(0, window)
        first, last = shift + spans[0].start * window, shift + spans[0].stop * window
        assert first <= pixel - min(pixel, radius - window) and last >= pixel + 1 + radius - window
        assert pixel - first <= radius + window and last - pixel <= radius + window
        widths = [s.stop - s.start for s in spans]
        assert widths == sorted(widths, reverse=True) and widths[0] < size // window


def _with_local_kernel(make_config, method: str, kernel: int) -> PatchTransformerClassifier:
    model = _model(make_config, method, window_size=4, local_kernel=kernel)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():  # trained-like weights: zero-initialised convolutions would test nothing
        for conv in model.projection.local:
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * 0.3)
    return model


@pytest.mark.parametrize("method", DENSE_METHODS)
def test_the_local_kernel_adds_each_modalitys_convolved_present_tokens(make_config, method: str) -> None:
    plain = _model(make_config, method, window_size=4, local_kernel=0)
    model = _with_local_kernel(make_config, method, 3)
    assert model.receptive_radius == plain.receptive_radius + 1
    own = dict(model.named_parameters())
    assert all(torch.equal(p, own[name]) for name, p in plain.named_parameters())  # only the kernels are new
    inputs, available = _crop(model, 12, 12, seed=4)
    origin = torch.tensor([[2, 6]])
    canvas = plan_canvas(origin, 1, 12, 12, 4)
    with torch.no_grad():
        got = model.projection.dense(inputs, available, canvas)  # (1, Hc, Wc, M, width)
        base = plain.projection.dense(inputs, available, canvas)
        present = place(available, canvas, False)
        for i, name in enumerate(model.config.modalities):
            here = present[0, i]
            mapped = model.projection.band_maps[name](place(torch.where(available[:, i : i + 1], inputs[name], 0.0), canvas)[0].permute(1, 2, 0))
            mapped = torch.where(here[..., None], mapped, 0.0)
            kernel = model.projection.local[i]
            expected = base[0, :, :, i] + torch.nn.functional.conv2d(
                mapped.permute(2, 0, 1)[None], kernel.weight, None, padding=1, groups=kernel.weight.shape[0]
            )[0].permute(1, 2, 0)
            expected = torch.where(here[..., None], expected, 0.0)  # a missing pixel keeps the missing (zero) token
            torch.testing.assert_close(got[0, :, :, i], expected, atol=1e-5, rtol=1e-4)
    assert torch.equal(got[0][~present[0].permute(1, 2, 0)], torch.zeros_like(got[0][~present[0].permute(1, 2, 0)]))


@pytest.mark.parametrize("method", DENSE_METHODS)
def test_with_a_local_kernel_a_tile_with_its_halo_still_gives_the_scene_logits(make_config, method: str) -> None:
    model = _with_local_kernel(make_config, method, 5)
    radius = model.receptive_radius
    inputs, available = _crop(model, 60, 70, seed=6)
    # a LiDAR gap with HS over and around the tile: LVPCnet's compensation convolutions, the farthest reach, run there
    available[:, 0, 5:55, 10:60] = True
    available[:, 1, 5:55, 10:60] = False
    r0, c0, h, w = 27, 33, 7, 5
    sl = (slice(None), slice(None), slice(r0 - radius, r0 + h + radius), slice(c0 - radius, c0 + w + radius))
    with torch.no_grad():
        whole = model.forward_dense(inputs, available, torch.tensor([[0, 0]]))
        tile = model.forward_dense({m: v[sl] for m, v in inputs.items()}, available[sl], torch.tensor([[r0 - radius, c0 - radius]]))
        # one pixel less of halo is not enough: the convolution's reach is counted in the radius
        short = (slice(None), slice(None), slice(r0 - radius + 1, r0 + h + radius - 1), slice(c0 - radius + 1, c0 + w + radius - 1))
        shorter = model.forward_dense({m: v[short] for m, v in inputs.items()}, available[short],
                                      torch.tensor([[r0 - radius + 1, c0 - radius + 1]]))
    assert torch.equal(tile[..., radius : radius + h, radius : radius + w], whole[..., r0 : r0 + h, c0 : c0 + w])
    assert not torch.equal(shorter[..., radius - 1 : radius - 1 + h, radius - 1 : radius - 1 + w], whole[..., r0 : r0 + h, c0 : c0 + w])


def test_the_local_kernel_is_odd_and_dense_only(make_config) -> None:
    with pytest.raises(ValueError, match="local_kernel must be 0 or an odd number"):
        _model(make_config, "mamol", local_kernel=4)
    with pytest.raises(ValueError, match="needs window_size"):
        ModalityProjection(["hs"], [4], 5, 16, local_kernel=3)


@pytest.mark.parametrize(("params", "message"), [
    ({"window_size": 3}, "window_size must be an even number of pixels >= 2, got 3"),
    ({"dense_readout": "centre"}, "dense_readout must be one of patch_mean, pixel, got 'centre'"),
    ({"missing_tokens": "nan"}, "missing_tokens must be one of zero, dummy, got 'nan'"),
])
def test_a_model_refuses_the_values_its_param_rules_refuse(make_config, params: dict, message: str) -> None:
    """The rules the catalog check reads (``param_rules``) are the ones the model applies when built."""
    with pytest.raises(ValueError, match=re.escape(message)):
        _model(make_config, "mamol", **params)
    key = next(iter(params))
    assert not method_class("mamol").param_rules[key].accepts(params[key])
