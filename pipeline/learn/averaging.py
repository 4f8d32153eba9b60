"""Tail averaging: a stage keeps the mean of its trainable weights over the last steps of its schedule.

One training run's final weights carry the noise of its last batches; the mean
over the schedule's tail (stochastic weight averaging's average,
``torch.optim.swa_utils``) sits nearer the middle of the region those steps
explore. Only the stage's trainable parameters are averaged (a frozen
backbone never moves), and models here have no batch-norm statistics to
recompute. Used by both trainers under ``training.selection: average``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.optim.swa_utils import get_swa_multi_avg_fn


class TailAverage:
    """Equal-weight mean of ``params`` over the last ``fraction`` of ``total_steps`` optimiser steps."""

    def __init__(self, params: list[torch.nn.Parameter], total_steps: int, fraction: float) -> None:
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        self.params: list[Tensor] = list(params)
        self.first = total_steps - max(1, math.ceil(total_steps * fraction))  # steps done before the average starts
        self.mean: list[Tensor] | None = None
        self.count = 0
        self._update = get_swa_multi_avg_fn()

    def update(self, steps_done: int) -> None:
        """Add the current weights if ``steps_done`` (optimiser steps so far) is inside the tail."""
        if steps_done <= self.first:
            return
        current = [p.detach() for p in self.params]
        if self.mean is None:
            self.mean = [p.clone() for p in current]
        else:
            self._update(self.mean, current, self.count)
        self.count += 1

    @torch.no_grad()
    def apply(self) -> int:
        """Copy the mean into the parameters; returns how many steps' weights it holds (0: none, nothing copied)."""
        if self.mean is not None:
            torch._foreach_copy_(self.params, self.mean)
        return self.count
