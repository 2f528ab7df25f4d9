"""Admission by feedback (``--thunderagent-admission feedback``): pure.

The fixed watermarks admit programs while their demand fits the KV pool. Where a larger batch
buys little (a CPU, where decay turns off), the engine then idles whenever every admitted
program is in a tool call while others wait. Admitting more than the pool holds fills that idle
time and costs recompute: the acting programs' KV that eviction takes comes back as prefill.
``AdmissionControl`` scales the capacity the scheduler sees by a factor of at least 1 so that
the two wastes balance, each measured as a fraction of one control period:

- **idle**: seconds the engine had no call while a tagged call was held;
- **recompute**: prompt tokens recomputed because eviction took their KV while their program
  was active (the table's ``missed_evicted_tokens`` less those of calls after a pause: a
  paused program's KV goes first by design, and pausing less is what admitting more does),
  divided by the measured prefill rate.

Both are smoothed over periods (an exponential average, weight ``smoothing`` on the newest:
misses are counted when calls finish, so one period's figure is lumpy). Each period the factor
rises by ``step`` when idle exceeds recompute by more than ``margin``, falls by the ratio
``decrease`` when recompute exceeds idle by more than ``margin``, and stays within
``[1, max_factor]``; it does not move before the prefill rate is known.
"""

from __future__ import annotations

import dataclasses

PERIOD_S = 5.0


@dataclasses.dataclass(frozen=True)
class Observed:
    """What the engine saw over one control period."""

    seconds: float
    idle_waiting_s: float  # no call in the engine while a tagged call was held
    evicted_tokens: int  # prompt tokens recomputed because eviction took their KV
    prefill_tokens_per_s: float | None  # measured; None until known


@dataclasses.dataclass(frozen=True)
class Feedback:
    factor: float
    idle: float  # fractions of the period
    recompute: float | None


class AdmissionControl:
    def __init__(self, max_factor: float = 4.0, step: float = 0.2, decrease: float = 0.8,
                 margin: float = 0.02, smoothing: float = 0.5) -> None:
        if not (max_factor >= 1 and step > 0 and 0 < decrease < 1 and margin >= 0
                and 0 < smoothing <= 1):
            raise ValueError("need max_factor >= 1, step > 0, 0 < decrease < 1, margin >= 0, "
                             "0 < smoothing <= 1")
        self.max_factor, self.step, self.decrease, self.margin = (
            max_factor, step, decrease, margin)
        self.smoothing = smoothing
        self.factor = 1.0
        self.idle: float | None = None  # the smoothed fractions
        self.recompute: float | None = None

    def _smooth(self, old: float | None, new: float) -> float:
        return new if old is None else round(old + self.smoothing * (new - old), 9)

    def update(self, seen: Observed) -> Feedback:
        """One period's observation; the factor from now on, and the two wastes it read."""
        if seen.seconds <= 0:
            return Feedback(self.factor, self.idle or 0.0, self.recompute)
        idle = self.idle = self._smooth(self.idle, seen.idle_waiting_s / seen.seconds)
        rate = seen.prefill_tokens_per_s
        if not rate:
            return Feedback(self.factor, idle, self.recompute)
        recompute = self.recompute = self._smooth(
            self.recompute, seen.evicted_tokens / rate / seen.seconds)
        if idle > recompute + self.margin:
            self.factor = min(self.max_factor, round(self.factor + self.step, 6))
        elif recompute > idle + self.margin:
            self.factor = max(1.0, round(self.factor * self.decrease, 6))
        return Feedback(self.factor, idle, recompute)
