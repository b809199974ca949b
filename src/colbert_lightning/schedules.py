"""Learning-rate schedules: linear warmup, then linear or cosine decay to ``max_steps``."""

from __future__ import annotations

import math
from typing import Literal

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

Decay = Literal["linear", "cosine", "constant"]


def check_decay(decay: str) -> None:
    """Raise ValueError unless ``decay`` is ``linear``, ``cosine`` or ``constant``."""
    if decay not in ("linear", "cosine", "constant"):
        raise ValueError(
            f"module.scheduler.decay must be linear, cosine or constant, got {decay!r}"
        )


def resolve_warmup_steps(warmup_steps: int | float, max_steps: int) -> int:
    """Warmup length in steps: an int is a count, a float in [0, 1) a fraction of ``max_steps``.

    Example:
        >>> resolve_warmup_steps(0.1, 1000), resolve_warmup_steps(50, 1000)
        (100, 50)
    """
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int | float):
        raise ValueError(f"module.scheduler.warmup_steps must be a number, got {warmup_steps!r}")
    if isinstance(warmup_steps, float) and not warmup_steps.is_integer():
        if not 0 <= warmup_steps < 1:
            raise ValueError(
                f"module.scheduler.warmup_steps as a fraction must be in [0, 1), got {warmup_steps}"
            )
        return int(round(warmup_steps * max_steps))
    steps = int(warmup_steps)
    if steps < 0 or steps > max_steps:
        raise ValueError(
            f"module.scheduler.warmup_steps={steps} must be between 0 and "
            f"trainer.max_steps={max_steps}"
        )
    return steps


def lr_factor(
    step: int, max_steps: int, warmup_steps: int, decay: Decay, min_ratio: float
) -> float:
    """Multiplier of the peak learning rate after ``step`` optimiser steps.

    Example:
        >>> [round(lr_factor(s, 10, 2, "linear", 0.0), 3) for s in (0, 1, 2, 6, 10)]
        [0.0, 0.5, 1.0, 0.5, 0.0]
    """
    if step < warmup_steps:
        return step / warmup_steps
    if decay == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    if decay == "linear":
        shape = 1.0 - progress
    elif decay == "cosine":
        shape = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        check_decay(decay)
    return min_ratio + (1.0 - min_ratio) * shape


def warmup_then_decay(
    optimizer: Optimizer,
    max_steps: int,
    warmup_steps: int | float = 0.1,
    decay: Decay = "linear",
    min_lr_ratio: float = 0.0,
) -> LambdaLR:
    """Linear warmup to the optimiser's learning rate, then decay to ``min_lr_ratio`` of it.

    Args:
        optimizer: the optimiser whose learning rate is scheduled.
        max_steps: the run's optimiser steps (``trainer.max_steps``).
        warmup_steps: a count of steps, or a fraction of ``max_steps`` (float below 1).
        decay: ``linear``, ``cosine`` or ``constant`` after warmup.
        min_lr_ratio: the final learning rate as a fraction of the peak.
    """
    if max_steps is None or max_steps < 1:
        raise ValueError(f"the schedule needs trainer.max_steps >= 1, got {max_steps}")
    check_decay(decay)
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"module.scheduler.min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
    warmup = resolve_warmup_steps(warmup_steps, max_steps)
    return LambdaLR(optimizer, lambda step: lr_factor(step, max_steps, warmup, decay, min_lr_ratio))
