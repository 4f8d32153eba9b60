"""MMP's training-time modality masking (pure torch; ``pipeline.learn.protocols`` re-exports it)."""

from __future__ import annotations

import torch


def mmp_mask(available: torch.Tensor, p: float = 0.5, generator: torch.Generator | None = None) -> torch.Tensor:
    """MMP's training-time masking: drop each available modality with probability ``p``, keep at least one.

    Args:
        available: bool (B, M), what each sample really has.
        p: drop probability per modality, in [0, 1).
        generator: torch generator for repeatable draws.

    Returns:
        bool (B, M), a subset of ``available``. A sample whose draw dropped every
        available modality is drawn again, so the result follows the drop
        distribution conditioned on keeping at least one. Samples with nothing
        available stay empty.
    """
    if not 0 <= p < 1:
        raise ValueError(f"p must lie in [0, 1), got {p}")
    available = available.bool()
    device = generator.device if generator is not None else available.device
    kept = available & (torch.rand(available.shape, generator=generator, device=device).to(available.device) >= p)
    redraw = available.any(dim=1) & ~kept.any(dim=1)
    while bool(redraw.any()):
        rows = redraw.nonzero(as_tuple=True)[0]
        draw = torch.rand((len(rows), available.shape[1]), generator=generator, device=device)
        kept[rows] = available[rows] & (draw.to(available.device) >= p)
        redraw = available.any(dim=1) & ~kept.any(dim=1)
    return kept
