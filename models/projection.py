"""Per-modality token projection: each pixel of a modality's patch becomes one token.

A modality's patch (B, C_m, P, P) gives P*P tokens: a linear map of the
pixel's C_m bands to the backbone width, plus a position embedding (one per
pixel position, shared by the modalities) and the modality's embedding. The
tokens of all modalities are concatenated in ``config.modalities`` order:
(B, M*P*P, width).

A missing modality's tokens are replaced, whatever its tensor holds, by
zeros (``missing_tokens="zero"``, the paper) or by a learnable per-position
dummy (``missing_tokens="dummy"``).

With ``window_size`` set, :meth:`ModalityProjection.dense` embeds whole
crops for the dense path (``models.dense``): the same band maps and modality
embeddings, a position embedding per position inside a W x W window (scene
coordinates), and per-pixel missing tokens (zero, or the centre position's
dummy). With ``local_kernel`` k > 0 each present token of a modality also gets a
depthwise k x k convolution of its modality's present tokens around it (a
convolutional position encoding, CPVT's PEG): the pixel-exact local geometry
(a height edge, a curb) that W x W windows with one position per window slot
encode only coarsely. Zero-initialised, so training starts from the plain
embedding; it widens the receptive radius by k // 2.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from models.dense import Canvas, place
from models.params import ParamRule, whole

MISSING_TOKEN_MODES = ("zero", "dummy")
MISSING_TOKENS = ParamRule(lambda mode: mode in MISSING_TOKEN_MODES, f"one of {', '.join(MISSING_TOKEN_MODES)}")
LOCAL_KERNEL = ParamRule(lambda k: whole(k) and (k == 0 or (k > 0 and k % 2 == 1)), "0 or an odd number of pixels")


def zero_where_missing(x: Tensor, present: Tensor) -> Tensor:
    """``x`` (B, ...) with the rows where ``present`` (B,) is false set to zero (NaN and inf included)."""
    mask = present.view(-1, *([1] * (x.dim() - 1)))
    return torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device))


class ModalityProjection(nn.Module):
    """Patches of M modalities -> (B, M*P*P, width) tokens, with missing ones replaced.

    Args:
        modalities: names, in the order of the ``available`` columns.
        bands: band count per modality.
        patch_size: patch side in pixels.
        width: token width (the backbone's).
        missing_tokens: ``"zero"`` or ``"dummy"``.
        window_size: side (pixels) of the dense path's attention windows, or None (patch path only).
        local_kernel: side of the dense path's depthwise convolution of the tokens (odd), 0 for none.
    """

    def __init__(
        self,
        modalities: list[str],
        bands: list[int],
        patch_size: int,
        width: int,
        missing_tokens: str = "zero",
        window_size: int | None = None,
        local_kernel: int = 0,
    ) -> None:
        super().__init__()
        MISSING_TOKENS.check("missing_tokens", missing_tokens)
        self.modalities = list(modalities)
        self.patch_size = patch_size
        self.tokens_per_modality = patch_size * patch_size
        self.missing_tokens = missing_tokens
        self.band_maps = nn.ModuleDict({name: nn.Linear(c, width) for name, c in zip(modalities, bands)})
        scale = width**-0.5
        self.position = nn.Parameter(scale * torch.randn(self.tokens_per_modality, width))
        self.modality = nn.Parameter(scale * torch.randn(len(modalities), width))
        if missing_tokens == "dummy":
            self.dummy = nn.Parameter(scale * torch.randn(len(modalities), self.tokens_per_modality, width))
        self.window_size = window_size
        if window_size is not None:
            # drawn from a forked RNG: the patch path's parameters initialise exactly as without the dense path
            with torch.random.fork_rng(devices=[]):
                self.window_position = nn.Parameter(scale * torch.randn(window_size * window_size, width))
        LOCAL_KERNEL.check("local_kernel", local_kernel)
        if local_kernel and window_size is None:
            raise ValueError("local_kernel is a dense-path setting: it needs window_size")
        self.local_kernel = local_kernel
        if local_kernel:
            with torch.random.fork_rng(devices=[]):  # every other parameter initialises as without it
                convs = [nn.Conv2d(width, width, local_kernel, padding=local_kernel // 2, groups=width, bias=False)
                         for _ in modalities]
            for conv in convs:  # zero: the embedding starts as without it
                nn.init.zeros_(conv.weight)
            self.local = nn.ModuleList(convs)

    def forward(self, inputs: dict[str, Tensor], available: Tensor) -> Tensor:
        groups = []
        for i, name in enumerate(self.modalities):
            present = available[:, i].view(-1, 1, 1)
            # zero the raw values too, so NaN/inf in a missing patch cannot reach the gradients
            x = zero_where_missing(inputs[name], available[:, i]).flatten(2).transpose(1, 2)  # (B, P*P, C_m)
            tokens = self.band_maps[name](x) + self.position + self.modality[i]
            fill = self.dummy[i].to(tokens.dtype) if self.missing_tokens == "dummy" else tokens.new_zeros(())
            groups.append(torch.where(present, tokens, fill))
        return torch.cat(groups, dim=1)

    def modality_slices(self) -> list[slice]:
        """Token index range of each modality in the concatenated sequence."""
        n = self.tokens_per_modality
        return [slice(i * n, (i + 1) * n) for i in range(len(self.modalities))]

    def dense(self, inputs: dict[str, Tensor], available: Tensor, canvas: Canvas) -> Tensor:
        """Tokens (B, canvas H, canvas W, M, width) of crops (B, C_m, H, W) placed on ``canvas``.

        ``available`` (B, M, H, W) is per pixel; canvas padding is unavailable.
        Missing values are zeroed before the band map, so NaN cannot reach the tokens or the gradients.
        """
        if self.window_size is None:
            raise ValueError("this projection has no window_size: the model does not support the dense path")
        present = place(available, canvas, False)  # (B, M, Hc, Wc)
        groups = [self.dense_modality(i, inputs[name], available[:, i : i + 1], canvas, present[:, i])
                  for i, name in enumerate(self.modalities)]
        return torch.stack(groups, dim=3)

    def dense_modality(self, index: int, x: Tensor, here: Tensor, canvas: Canvas, present: Tensor | None = None) -> Tensor:
        """Tokens (B, canvas H, canvas W, width) of modality ``index`` from crops ``x`` (B, C, H, W) present where ``here``
        (B, 1, H, W) says; ``present`` is ``here`` placed on the canvas (computed when not given)."""
        if self.window_size is None:
            raise ValueError("this projection has no window_size: the model does not support the dense path")
        w = self.window_size
        if present is None:
            present = place(here, canvas, False)[:, 0]
        reps = (canvas.height // w, canvas.width // w)
        position = self.window_position.view(w, w, -1).repeat(*reps, 1)  # (Hc, Wc, width), canvas starts on the grid
        name = self.modalities[index]
        x = place(torch.where(here, x, torch.zeros((), dtype=x.dtype)), canvas)
        tokens = self.band_maps[name](x.permute(0, 2, 3, 1))  # (B, Hc, Wc, width)
        if self.local_kernel:
            # neighbours' tokens only where their pixel has the modality: a missing pixel adds nothing
            mapped = torch.where(present[:, :, :, None], tokens, tokens.new_zeros(())).permute(0, 3, 1, 2)
            tokens = tokens + self.local[index](mapped).permute(0, 2, 3, 1)
        tokens = tokens + position + self.modality[index]
        if self.missing_tokens == "dummy":
            fill = self.dummy[index, self.tokens_per_modality // 2].to(tokens.dtype)
        else:
            fill = tokens.new_zeros(())
        return torch.where(present[:, :, :, None], tokens, fill)
