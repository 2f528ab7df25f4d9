"""Decode steps timed for ``--thunderagent-decay auto`` (glue for ``policy.batching``).

A BEFORE hook on ``Scheduler.run_batch`` notes when each batch starts; between two decode
batches in a row the scheduler loop runs without waiting for requests, so the gap is one
decode step of the first batch's size (with SGLang's overlap schedule, the time the loop waits
for its result), its bookkeeping included. No synchronisation is added: two clock reads and a
deque append per batch. Under tensor parallelism rank 0's fraction rides the per-step
broadcast (``tp_consensus``) and every rank decides by it.
"""

from __future__ import annotations

import time

from thunderagent_sglang.engine.guards import guard
from thunderagent_sglang.policy.batching import StepFit

REFIT_EVERY = 32  # new samples between two fits (a fit is O(window))


class DecodeMeter:
    def __init__(self, clock=time.perf_counter):
        self.clock = clock
        self.fit = StepFit()
        self._last: tuple[int, float] | None = None  # (batch size, start) of a decode batch
        self._added = 0
        self._fitted_at = -REFIT_EVERY
        self._fraction: float | None = None
        self._agreed = False  # under tensor parallelism: rank 0's value, from now on
        self._agreed_value: float | None = None

    def time_batch(self, scheduler, batch, *args, **kwargs) -> None:
        """BEFORE ``Scheduler.run_batch`` (None: SGLang's arguments unchanged)."""
        guard(self._note, batch)

    def _note(self, batch) -> None:
        now = self.clock()
        decode = batch is not None and batch.forward_mode.is_decode()
        last, self._last = self._last, (batch.batch_size(), now) if decode else None
        if decode and last is not None:
            self.fit.add(last[0], now - last[1])
            self._added += 1

    def local(self) -> float | None:
        """This rank's shared fraction (refitted every ``REFIT_EVERY`` new steps)."""
        if self._added - self._fitted_at >= REFIT_EVERY:
            self._fitted_at = self._added
            self._fraction = self.fit.shared_fraction()
        return self._fraction

    def value(self) -> float | None:
        return self._agreed_value if self._agreed else self.local()

    def adopt(self, value: float | None) -> None:
        """Decide by rank 0's fraction from now on (every rank, rank 0 included)."""
        self._agreed, self._agreed_value = True, value

    def stats(self) -> dict:
        """Steps timed, and the fraction the scheduler last read (no refit here)."""
        used = self._agreed_value if self._agreed else self._fraction
        return {"decode_steps_timed": self._added,
                "decode_shared_fraction": None if used is None else round(used, 4)}
