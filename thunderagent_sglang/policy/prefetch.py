"""Pure: ``PrefetchQueue``, the KV offloaded at tool boundaries waiting to be loaded back.

Each entry is due at its program's predicted return less the transfer
(``policy.offload.prefetch_due``); due entries come out of a heap (stale heap items are
skipped, so a re-timed entry costs one push). Every entry ends counted under one outcome:
``on_time``, ``early``, ``late``, ``wasted``, ``cancelled`` or ``empty`` (see
``docs/interfaces.md``).
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
from typing import Iterator

OUTCOMES = ("on_time", "early", "late", "wasted", "cancelled", "empty")


@dataclasses.dataclass
class Prefetch:
    """KV a program offloaded at its tool boundary, to load back by ``due``."""

    tokens: int  # moved to the host at the boundary
    due: float = 0.0
    spread_s: float = 0.0  # the prediction's p90 - median (at least a tick)
    loaded_at: float | None = None
    resident_after: int = 0  # the program's resident tokens right after the load


class PrefetchQueue:
    def __init__(self) -> None:
        self.entries: dict[str, Prefetch] = {}  # program id -> its entry
        self._heap: list[tuple[float, int, str]] = []  # (due, order, program id)
        self._order = itertools.count()
        self.outcomes = {k: 0 for k in OUTCOMES}

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, program_id: str) -> Prefetch | None:
        return self.entries.get(program_id)

    def schedule(self, program_id: str, entry: Prefetch, due: float, spread_s: float) -> None:
        """(Re)time ``entry``: it comes out of ``due_now`` at ``due``."""
        entry.due, entry.spread_s = due, spread_s
        self.entries[program_id] = entry
        heapq.heappush(self._heap, (due, next(self._order), program_id))

    def due_now(self, now: float) -> Iterator[tuple[str, Prefetch]]:
        """The entries not loaded yet whose time has come, earliest first."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            when, _, program_id = heapq.heappop(heap)
            entry = self.entries.get(program_id)
            if entry is not None and entry.loaded_at is None and entry.due == when:
                yield program_id, entry

    def end(self, program_id: str, if_loaded: str, if_not: str) -> Prefetch | None:
        """Remove the program's entry, counted as ``if_loaded`` or ``if_not``."""
        entry = self.entries.pop(program_id, None)
        if entry is not None:
            self.outcomes[if_loaded if entry.loaded_at is not None else if_not] += 1
        return entry
