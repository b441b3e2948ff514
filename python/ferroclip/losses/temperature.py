"""Temperature schedules for the InfoNCE losses (seed 001's ``TemperatureScheduler``).

Values at step ``t`` (``W = warmup_steps``, ``T = total_steps``, ``T0 = initial_temp``):

- ``constant``: ``T0``;
- ``warmup``: linear from ``max_temp`` at step 0 to ``T0`` at ``W``, then ``T0`` (a soft
  start: a high temperature spreads gradient over all negatives while features are poor);
- ``cosine``: the warmup, then cosine from ``T0`` at ``W`` down to ``min_temp`` at ``T``;
- ``exponential``: the warmup, then ``T0 · (min_temp/T0)^((t-W)/(T-W))``;
- ``adaptive``: starts at ``T0``; every ``patience`` steps, if the mean loss of the last
  window did not improve on the one before by ``threshold`` (relative), the temperature is
  multiplied by ``decay`` (sharper, to push on the hard negatives once the easy ones are
  solved).

Every value is clamped to ``[min_temp, max_temp]``. The scheduler is stateful only for
``adaptive``; ``state_dict`` makes a resumed run continue exactly.
"""

from __future__ import annotations

import math
from typing import Any, Literal

__all__ = ["ScheduleType", "TemperatureScheduler"]

ScheduleType = Literal["constant", "warmup", "cosine", "exponential", "adaptive"]
SCHEDULES = ("constant", "warmup", "cosine", "exponential", "adaptive")


class TemperatureScheduler:
    def __init__(
        self,
        initial_temp: float = 0.07,
        min_temp: float = 0.01,
        max_temp: float = 0.1,
        warmup_steps: int = 1000,
        total_steps: int = 10000,
        schedule_type: ScheduleType = "cosine",
        *,
        patience: int = 100,
        threshold: float = 0.01,
        decay: float = 0.95,
    ) -> None:
        if schedule_type not in SCHEDULES:
            raise ValueError(f"schedule_type must be one of {SCHEDULES}, got {schedule_type!r}")
        if not 0 < min_temp <= initial_temp <= max_temp:
            raise ValueError(f"need 0 < min_temp <= initial_temp <= max_temp, got {min_temp}, {initial_temp}, {max_temp}")
        if warmup_steps < 0 or total_steps < 1 or patience < 1 or not 0 < decay <= 1:
            raise ValueError("warmup_steps >= 0, total_steps >= 1, patience >= 1 and 0 < decay <= 1 are required")
        self.initial_temp, self.min_temp, self.max_temp = float(initial_temp), float(min_temp), float(max_temp)
        self.warmup_steps, self.total_steps = int(warmup_steps), int(total_steps)
        self.schedule_type = schedule_type
        self.patience, self.threshold, self.decay = int(patience), float(threshold), float(decay)
        self.current = self.initial_temp
        self._window: list[float] = []
        self._previous: float | None = None

    def value(self, step: int) -> float:
        """The scheduled temperature at ``step`` (for ``adaptive``: the current one)."""
        if self.schedule_type == "adaptive":
            return self.current
        if self.schedule_type == "constant":
            return self._clamp(self.initial_temp)
        w = self.warmup_steps
        if step < w:
            return self._clamp(self.max_temp + (self.initial_temp - self.max_temp) * step / w)
        if self.schedule_type == "warmup":
            return self._clamp(self.initial_temp)
        progress = min(1.0, (step - w) / max(1, self.total_steps - w))
        if self.schedule_type == "cosine":
            t = self.min_temp + 0.5 * (self.initial_temp - self.min_temp) * (1 + math.cos(math.pi * progress))
        else:
            t = self.initial_temp * (self.min_temp / self.initial_temp) ** progress
        return self._clamp(t)

    def step(self, step: int, loss: float | None = None) -> float:
        """Advance to ``step`` (recording ``loss`` for ``adaptive``) and return the temperature."""
        if self.schedule_type == "adaptive" and loss is not None:
            self._window.append(float(loss))
            if len(self._window) >= self.patience:
                mean = sum(self._window) / len(self._window)
                if self._previous is not None and mean > self._previous * (1.0 - self.threshold):
                    self.current = self._clamp(self.current * self.decay)
                self._previous, self._window = mean, []
        self.current = self.value(step)
        return self.current

    def _clamp(self, t: float) -> float:
        return min(self.max_temp, max(self.min_temp, t))

    def state_dict(self) -> dict[str, Any]:
        return {"current": self.current, "window": list(self._window), "previous": self._previous}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.current = float(state["current"])
        self._window = [float(x) for x in state["window"]]
        self._previous = None if state["previous"] is None else float(state["previous"])
