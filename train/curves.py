"""Training-loss curves: smoothing and the step at which a curve reaches a target.

Used by the experiment (steps to the LoRA run's final loss) and by its plots.
"""

from __future__ import annotations

from collections.abc import Sequence
from math import fsum


def moving_average(values: Sequence[float], window: int) -> list[float]:
    """Trailing mean over up to ``window`` values (the first points average fewer).

    Each mean is summed afresh (a running sum drifts: a value equal to a target could
    compare as 1e-16 above it)."""
    return [fsum(values[max(0, i + 1 - window):i + 1]) / min(i + 1, window)
            for i in range(len(values))]


def steps_to_target(curve: Sequence[float], target: float, smooth: int) -> int | None:
    """First step (1-based) whose smoothed loss is at or below ``target``; None if never."""
    for step, value in enumerate(moving_average(curve, smooth), start=1):
        if value <= target:
            return step
    return None
