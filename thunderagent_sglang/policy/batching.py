"""Does decay pay on this engine? The share of a decode step that its batch shares (pure).

Decay (``policy.scheduling``: an acting program counts ``2^(-t / half_life)`` of its tokens)
admits more programs than the pool holds, betting that acting programs' KV is not all needed
at once. What the bet buys is a larger decode batch; what it costs is recompute when the bet
loses. A larger batch is worth something only where a decode step's time is largely shared by
its sequences (a GPU reading the weights once per step); where it grows with every sequence
(this project's CPU engine: each sequence's attention and MLP are computed on their own), more
programs at once only means more recompute. Measured in the simulator: decay gains 4-8% at
GPU scale with its real step costs, loses 6-9% with the same costs made linear in the batch,
and loses 10-13% on this CPU's fitted model (``README.md``, Simulator).

``StepFit`` fits ``seconds = a + b * batch`` over the last decode steps; the shared fraction is
``a / (a + b * mean batch)``. ``decay_wanted`` turns decay on at ``ON_FROM`` and above, off
below ``OFF_BELOW``, and keeps the current state between them and while the fit cannot tell
(too few steps, one batch size only). The band is wide because the fit on a CPU wanders: the
fleet benchmark's replicas measured 0-21% (contexts of 1-12k tokens; a first rule switching at
20% flipped back and forth there), the simulator's CPU model 6-14%, its H100 costs 53-74%.
"""

from __future__ import annotations

from collections import deque

ON_FROM = 0.35  # decay on at this shared fraction or above
OFF_BELOW = 0.25  # off below this; unchanged in between
WINDOW = 512
MIN_SAMPLES = 64
MIN_SPREAD = 2  # the batch sizes must span at least this much


class StepFit:
    def __init__(self, window: int = WINDOW, min_samples: int = MIN_SAMPLES,
                 min_spread: int = MIN_SPREAD):
        self.min_samples, self.min_spread = min_samples, min_spread
        self._samples: deque[tuple[int, float]] = deque(maxlen=window)

    def add(self, batch: int, seconds: float) -> None:
        if batch > 0 and seconds > 0:
            self._samples.append((batch, seconds))

    def __len__(self) -> int:
        return len(self._samples)

    def line(self) -> tuple[float, float] | None:
        """(a, b) of the least-squares line, or None while it cannot be told."""
        samples = self._samples
        if len(samples) < self.min_samples:
            return None
        sizes = [n for n, _ in samples]
        if max(sizes) - min(sizes) < self.min_spread:
            return None
        mean_n = sum(sizes) / len(sizes)
        mean_s = sum(s for _, s in samples) / len(samples)
        var = sum((n - mean_n) ** 2 for n in sizes)
        b = sum((n - mean_n) * (s - mean_s) for n, s in samples) / var
        return mean_s - b * mean_n, b

    def shared_fraction(self) -> float | None:
        """The share of a step at the mean batch that does not grow with the batch, in
        [0, 1]; None while it cannot be told."""
        line = self.line()
        if line is None:
            return None
        a, b = line
        mean_n = sum(n for n, _ in self._samples) / len(self._samples)
        total = a + b * mean_n
        if total <= 0:
            return None
        return min(1.0, max(0.0, a / total))


def decay_wanted(shared: float | None, current: bool) -> bool:
    """Decay on where a decode step is largely shared by its batch, off where it is not;
    unchanged in the band between and while unknown."""
    if shared is None or OFF_BELOW <= shared < ON_FROM:
        return current
    return shared >= ON_FROM
