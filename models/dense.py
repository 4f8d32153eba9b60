"""The dense path's window geometry: one token per pixel per modality, attention inside W x W windows.

A method that supports it (``supports_dense``: every registered method) offers,
beside the patch forward::

    logits   = model.forward_dense(inputs, available, origin, margin)       # (B, K, H - 2 margin, W - 2 margin)
    features = model.dense_features(inputs, available, origin, margin)      # (B, M, width, ...), before the head
    canvas   = plan_canvas(origin, B, H, W, model.window_size)    # where the crops sit on the window grid
    tokens   = model.projection.dense(inputs, available, canvas)   # (B, H', W', M, width), the token embedding
    tokens   = model.dense_tokens(inputs, available, canvas)       # what enters the blocks (MMP: missing ones projected)
    radius   = model.receptive_radius                               # the halo a tile needs (pixels)

Args of ``forward_dense`` / ``dense_features``:
    margin: pixels at every crop edge whose output is not wanted (a tile's halo):
        the output is the crop's interior, (H - 2 margin, W - 2 margin), and the
        blocks skip the windows that only the margin needs. The interior equals
        the same pixels of a call without margin, bit for bit.
    inputs: modality name -> float (B, C_m, H, W), normalised; H and W are arbitrary.
    available: bool (B, M, H, W), per pixel; a missing pixel's values are never
        read (NaN there is harmless): its token is the zero (or dummy) token, or with
        MMP the token projected from the pixel's neighbourhood of the modalities it has.
    origin: long (B, 2), the scene (row, col) of each crop's top-left pixel, or
        None for (0, 0). Windows are anchored to the *scene* grid through it, so
        a pixel's logits do not depend on where a crop or tile starts.

Geometry (all in pixels). Let ``W = window_size`` (even) and ``s = W // 2``.
Blocks ``0, 2, 4, ...`` attend within windows whose scene rows/cols start at
multiples of ``W``; blocks ``1, 3, ...`` within windows shifted by ``s`` (Swin,
ViTDet): the open_clip blocks and their weights are untouched, only the
sequences they see are windows, ``(B * windows, W * W * M, width)``, every
modality's tokens of a window attending to each other. Each crop is placed
on a zero *canvas* whose top-left lies on the scene's window grid and which
leaves at least ``s`` pixels of padding on every side; padding pixels are
"nothing available" (the same as outside the scene), so no attention mask is
needed. In a shifted block the ``s``-wide canvas border is padding and stays
as it is.

The token of pixel (r, c) of modality i is ``band_map_i(x) + modality_i +
window_position[(r mod W) * W + c mod W]`` (scene coordinates), or the missing
token. A pixel's logits are the head applied to its M output tokens,
concatenated (the patch path's head, same weights).

The block loop itself is :func:`run_windowed_blocks`; dense pretraining
(``models.pretraining.MaskedPixelModel.forward_dense``) runs the same blocks
through it on the same token embedding (``projection.band_maps``,
``projection.modality``, ``projection.window_position``, the missing token),
so what it learns is what the dense classifier computes. This API is stable.

Receptive radius: a pixel's logits depend only on inputs at most
``receptive_radius(depth, W)`` pixels away (Chebyshev distance), computed
exactly from the window grid (about ``depth * s + s``). A tile read with that
halo gives the same logits as the whole scene, bit for bit. Pixels closer
than the radius to a crop's edge see the canvas padding ("nothing available")
in place of the scene beyond the crop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from models.params import ParamRule, whole

WINDOW_SIZE = ParamRule(lambda w: whole(w) and w >= 2 and w % 2 == 0, "an even number of pixels >= 2")
"""Shifted windows move by half a window, so a window is an even number of pixels."""


def check_window_size(window: int) -> int:
    """``window`` if it is an even number >= 2 (shifted windows move by half of it), else ValueError."""
    return int(WINDOW_SIZE.check("window_size", window))


def block_shift(index: int, window: int) -> int:
    """Offset (pixels) of block ``index``'s windows from the scene grid: 0 for even blocks, W/2 for odd ones."""
    return window // 2 if index % 2 else 0


def receptive_radius(depth: int, window: int) -> int:
    """Farthest input pixel (per axis) that can change a pixel's output after ``depth`` windowed blocks.

    Exact for the alternating grid: walks back from each position inside a
    window, growing the dependency interval to whole windows block by block.
    """
    worst = 0
    for p in range(window):
        lo = hi = p
        for index in reversed(range(depth)):
            o = block_shift(index, window)
            lo = (lo - o) // window * window + o
            hi = (hi - o) // window * window + o + window - 1
        worst = max(worst, p - lo, hi - p)
    return worst


@dataclass(frozen=True)
class Canvas:
    """Where each crop sits on the window-aligned canvas: ``top``/``left`` (B,) offsets, canvas size."""

    top: list[int]
    left: list[int]
    height: int
    width: int
    crop_height: int
    crop_width: int


def plan_canvas(origin: Tensor | None, batch: int, height: int, width: int, window: int) -> Canvas:
    """The canvas for ``batch`` crops of (height, width) starting at scene ``origin`` (B, 2)."""
    s = window // 2
    if origin is None:
        rows, cols = [0] * batch, [0] * batch
    else:
        if origin.shape != (batch, 2):
            raise ValueError(f"origin must be a (B, 2) tensor of scene (row, col), got {tuple(origin.shape)}")
        rows, cols = (origin[:, 0].tolist(), origin[:, 1].tolist())
    # top-left of the canvas on the scene grid: a multiple of W at least s before the crop
    top = [int(r) - ((int(r) - s) // window * window) for r in rows]
    left = [int(c) - ((int(c) - s) // window * window) for c in cols]
    canvas_h = max(-(-(t + height + s) // window) * window for t in top)
    canvas_w = max(-(-(lf + width + s) // window) * window for lf in left)
    return Canvas(top, left, canvas_h, canvas_w, height, width)


def place(x: Tensor, canvas: Canvas, fill: float | bool = 0) -> Tensor:
    """(B, C, H, W) crops onto a (B, C, canvas H, canvas W) canvas filled with ``fill``."""
    out = x.new_full((x.shape[0], x.shape[1], canvas.height, canvas.width), fill)
    for b, (t, lf) in enumerate(zip(canvas.top, canvas.left)):
        out[b, :, t : t + canvas.crop_height, lf : lf + canvas.crop_width] = x[b]
    return out


def crop(x: Tensor, canvas: Canvas) -> Tensor:
    """The crops (B, H, W, ...) back out of a canvas-shaped (B, canvas H, canvas W, ...) tensor."""
    h, w = canvas.crop_height, canvas.crop_width
    return torch.stack([x[b, t : t + h, lf : lf + w] for b, (t, lf) in enumerate(zip(canvas.top, canvas.left))])


def window_grid(x: Tensor, window: int) -> Tensor:
    """(B, H, W, ...) with H, W multiples of ``window`` -> a (B, H/window, W/window, window, window, ...) view.

    No copy (``x`` may be a strided slice of a canvas): window ``(i, j)`` of crop ``b``
    is ``grid[b, i, j]``; reshaping a slice of rows of windows gives attention sequences.
    """
    b, h, w = x.shape[:3]
    return x.view(b, h // window, window, w // window, window, *x.shape[3:]).transpose(2, 3)


def row_chunks(batch: int, window_rows: int, rows_per_chunk: int) -> list[tuple[int, slice]]:
    """(crop, rows of windows) pieces that cover a (batch, window_rows) grid, ``rows_per_chunk`` rows each."""
    return [(b, slice(i, min(i + rows_per_chunk, window_rows))) for b in range(batch) for i in range(0, window_rows, rows_per_chunk)]


def neighbourhood_mean(x: Tensor, radius: int) -> Tensor:
    """Each pixel of ``x`` (B, C, H, W) as the mean over its (2 radius + 1)^2 neighbourhood inside the crop.

    The ``patch_mean`` readout: what a patch's mean over its tokens is on the dense path. Two 1-D
    means (rows, then columns) give the same mean over the in-crop rectangle, in less work.
    """
    if not radius:
        return x
    size = 2 * radius + 1
    x = nn.functional.avg_pool2d(x, (size, 1), stride=1, padding=(radius, 0), count_include_pad=False)
    return nn.functional.avg_pool2d(x, (1, size), stride=1, padding=(0, radius), count_include_pad=False)


def check_margin(margin: int, height: int, width: int) -> None:
    """A margin must be >= 0 and leave pixels of a ``height`` x ``width`` crop."""
    if margin < 0 or 2 * margin >= min(height, width):
        raise ValueError(f"margin must be >= 0 and leave pixels of a {height} x {width} crop, got {margin}")


def needed_windows(lo: int, hi: int, size: int, depth: int, window: int) -> list[slice]:
    """Per block, the windows (indices along one canvas axis) that output pixels ``[lo, hi)`` depend on.

    Walks back from the last block: a block computes the windows of its grid
    (offset ``block_shift``) that overlap what the next block reads, and the
    block before must then provide those windows' whole span. Windows outside
    are never read by a wanted pixel, so skipping them changes no wanted output
    (a tile's halo is mostly such windows in the last blocks).
    """
    spans: list[slice] = []
    for index in reversed(range(depth)):
        shift = block_shift(index, window)
        count = (size - 2 * shift) // window
        first = max(0, (lo - shift) // window)
        last = min(count, -(-(hi - shift) // window))
        spans.append(slice(first, max(first, last)))
        lo, hi = shift + first * window, shift + max(first, last) * window
    return spans[::-1]


def shifted_region(height: int, width: int, shift: int) -> tuple[slice, slice]:
    """The part of a canvas a block with windows offset by ``shift`` covers (the border is padding)."""
    return slice(shift, height - shift), slice(shift, width - shift)


def run_windowed_blocks(
    x: Tensor,
    token_avail: Tensor | None,
    canvas: Canvas,
    margin: int,
    window: int,
    blocks: nn.ModuleList,
    run_block: Callable[[int, nn.Module, Tensor, Any], Tensor],
    block_context: Callable[[Tensor], Any],
    chunk_tokens: int,
) -> Tensor:
    """The backbone blocks over canvas tokens ``x`` (B, Hc, Wc, M, width): windows, shifted in odd blocks.

    Only the windows the crops' pixels without their ``margin`` depend on are
    computed (:func:`needed_windows`). ``token_avail`` (B, Hc, Wc, M, M), each
    token's own pixel pattern, is cut into the same sequences and handed to
    ``block_context`` (None: the context is None); ``run_block(index, block,
    sequence, context)`` runs one block on (windows, W * W * M, width).
    """
    b, height, width, m = x.shape[:4]
    h, w = canvas.crop_height, canvas.crop_width
    depth = len(blocks)
    row_spans = needed_windows(min(canvas.top) + margin, max(canvas.top) + h - margin, height, depth, window)
    col_spans = needed_windows(min(canvas.left) + margin, max(canvas.left) + w - margin, width, depth, window)
    for index, block in enumerate(blocks):
        shift = block_shift(index, window)
        rows, cols = shifted_region(height, width, shift)
        # without autograd the windows are written back where they were read (they are disjoint)
        out = x.clone() if torch.is_grad_enabled() else x
        spans = (slice(None), row_spans[index], col_spans[index])
        source = window_grid(x[:, rows, cols], window)[spans]  # (B, nh, nw, W, W, M, width), a view
        target = window_grid(out[:, rows, cols], window)[spans]
        pattern = window_grid(token_avail[:, rows, cols], window)[spans] if token_avail is not None else None
        nh, nw = source.shape[1:3]
        # a few rows of windows at a time: every op of a block is per window, and pieces that stay
        # in the CPU's cache run the memory-bound half of a block (casts, norms, GELU, adds) fast
        step = max(1, chunk_tokens // (nw * window * window * m))
        for crop_index, piece in row_chunks(b, nh, step):
            shape = source[crop_index, piece].shape
            seq = source[crop_index, piece].reshape(-1, window * window * m, shape[-1])
            context = None if pattern is None else block_context(pattern[crop_index, piece].reshape(seq.shape[0], seq.shape[1], -1))
            target[crop_index, piece] = run_block(index, block, seq, context).view(shape)
        x = out
    return x
