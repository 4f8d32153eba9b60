"""One training stage's optimiser: AdamW, the warm-up/decay schedule, gradient clipping, the tail average.

The patch and the dense trainer take every step through :class:`StageOptimiser`,
so the learning-rate defaults, the schedule and the clip are one rule each.
AdamW (decoupled weight decay) is a deliberate choice over the papers' Adam
with L2 weight decay: docs/accuracy.md, "Steadier training".
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from models.base import OptimizerDefaults
from pipeline.config.catalog import Training
from pipeline.learn.averaging import TailAverage


def linear_warmup_decay(total_steps: int, warmup_fraction: float) -> Callable[[int], float]:
    """LR multiplier: linear warm-up over ``warmup_fraction`` of the steps, then linear decay to 0."""
    warmup = max(1, int(round(total_steps * warmup_fraction))) if warmup_fraction > 0 else 0

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return factor


class StageOptimiser:
    """AdamW over one stage's trainable ``params`` for ``total_steps`` steps, as ``training`` says.

    The learning rate and weight decay are the catalog's where it sets them,
    else the method's ``defaults``; with ``training.selection: average`` the
    stage also keeps the mean of its weights over the schedule's tail.
    """

    def __init__(self, params: list[torch.nn.Parameter], total_steps: int, training: Training,
                 defaults: OptimizerDefaults) -> None:
        self.params = list(params)
        self.total = total_steps
        self.clip = training.grad_clip
        lr = training.lr if training.lr is not None else defaults.lr
        weight_decay = training.weight_decay if training.weight_decay is not None else defaults.weight_decay
        self.optimiser = torch.optim.AdamW(self.params, lr=lr, weight_decay=weight_decay)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(self.optimiser, linear_warmup_decay(total_steps, training.warmup_fraction))
        self.average = TailAverage(self.params, total_steps, training.average_fraction) if training.selection == "average" else None
        self.steps = 0

    @property
    def done(self) -> bool:
        """Whether the schedule has run all its steps."""
        return self.steps >= self.total

    @property
    def lr(self) -> float:
        """The learning rate of the next step."""
        return float(self.schedule.get_last_lr()[0])

    def step(self, loss: Tensor) -> None:
        """One optimiser step on ``loss``: back-propagate (in float32), clip, step, advance the schedule."""
        self.optimiser.zero_grad(set_to_none=True)
        loss.float().backward()
        if self.clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        self.optimiser.step()
        self.schedule.step()
        self.steps += 1
        if self.average is not None:
            self.average.update(self.steps)

    def keep_average(self) -> None:
        """Under ``selection: average``, put the tail's mean into the parameters (call once, after the last step)."""
        if self.average is not None:
            self.average.apply()
