"""When to evaluate during training: densely early (log-spaced), then at a fixed interval."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EvaluationSchedule:
    """Optimiser steps at which to run dev evaluation.

    Step 0 (before any update) when ``at_start``; then ``first``, ``first * growth``,
    ``first * growth**2``, ... (rounded) while below ``interval``; then every multiple of
    ``interval``; and always ``max_steps``.

    Args:
        at_start: evaluate at step 0.
        first: first log-spaced step (>= 1).
        growth: ratio between successive log-spaced steps (> 1).
        interval: the regular spacing once the log-spaced steps reach it (>= 1).

    Example:
        >>> EvaluationSchedule(first=8, growth=2.0, interval=100).steps(350)
        [0, 8, 16, 32, 64, 100, 200, 300, 350]
        >>> EvaluationSchedule(at_start=False, first=3, growth=1.5, interval=10).steps(20)
        [3, 4, 7, 10, 20]
    """

    at_start: bool = True
    first: int = 8
    growth: float = 2.0
    interval: int = 250

    def __post_init__(self) -> None:
        if isinstance(self.first, bool) or not isinstance(self.first, int) or self.first < 1:
            raise ValueError(
                f"evaluation schedule: first must be an integer >= 1, got {self.first!r}"
            )
        if not self.growth > 1:
            raise ValueError(f"evaluation schedule: growth must be > 1, got {self.growth!r}")
        if (
            isinstance(self.interval, bool)
            or not isinstance(self.interval, int)
            or self.interval < 1
        ):
            raise ValueError(
                f"evaluation schedule: interval must be an integer >= 1, got {self.interval!r}"
            )

    def _early_steps(self) -> list[int]:
        """The log-spaced steps below ``interval``, increasing and without repeats."""
        early: list[int] = []
        value = float(self.first)
        while round(value) < self.interval:
            step = round(value)
            if not early or step > early[-1]:
                early.append(step)
            value *= self.growth
        return early

    def should_evaluate(self, step: int, max_steps: int) -> bool:
        """Whether to evaluate after ``step`` optimiser steps of a ``max_steps`` run.

        Args:
            step: optimiser steps taken so far (0 before training).
            max_steps: the run's last step; negative (Lightning's "no limit") means none.
        """
        if step < 0 or (max_steps >= 0 and step > max_steps):
            return False
        if step == 0:
            return self.at_start
        if step == max_steps:
            return True
        if step % self.interval == 0:
            return True
        return step < self.interval and step in self._early_steps()

    def steps(self, max_steps: int) -> list[int]:
        """Every step in ``0..max_steps`` that ``should_evaluate`` accepts, in order."""
        if max_steps < 0:
            raise ValueError(f"steps() needs a finite max_steps >= 0, got {max_steps}")
        chosen = [0] if self.at_start else []
        chosen += [step for step in self._early_steps() if step <= max_steps]
        chosen += list(range(self.interval, max_steps + 1, self.interval))
        if max_steps > 0 and max_steps not in chosen:
            chosen.append(max_steps)
        return sorted(set(chosen))
