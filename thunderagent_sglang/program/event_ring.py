"""Pure: ``EventRing``, a bounded history of program events for the live view
(``GET /programs/events?since=SEQ``): each event numbered in order, the oldest dropped first.

Kinds: ``call`` (a call entered the engine: reasoning), ``held`` (a call held: its program is
paused or not admitted yet), ``finish`` (a call left the engine, with its prompt, cached and
output tokens), ``tool`` (a tool phase started or ended, its tool when named), ``pause`` and
``resume`` (with the reason and, at a pause, what was done with its KV), ``end`` (a program
ended, with its cause).
"""

from __future__ import annotations

import time
from collections import deque
from itertools import islice
from typing import Callable

KINDS = ("call", "held", "finish", "tool", "pause", "resume", "end")
DEFAULT_CAPACITY = 10_000
MAX_PAGE = 5_000


class EventRing:
    def __init__(self, capacity: int = DEFAULT_CAPACITY,
                 clock: Callable[[], float] = time.time):
        if capacity < 1:
            raise ValueError("the event ring needs room for at least one event")
        self.capacity = capacity
        self.clock = clock  # wall-clock seconds: the page draws them on a time axis
        self._events: deque[dict] = deque(maxlen=capacity)
        self._next = 1

    def add(self, kind: str, program_id: str, **fields) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown program event kind {kind!r}")
        self._events.append({"seq": self._next, "t": round(self.clock(), 3), "kind": kind,
                             "program_id": program_id,
                             **{k: v for k, v in fields.items() if v is not None}})
        self._next += 1

    @property
    def first_seq(self) -> int:
        """The oldest kept event's number (the next one's when none is kept)."""
        return self._events[0]["seq"] if self._events else self._next

    def since(self, seq: int, limit: int = 1_000) -> dict:
        """Events numbered above ``seq``, oldest first, at most ``limit``. ``next`` is what to
        ask for next time; ``missed`` counts events dropped before the caller read them."""
        if seq < 0:
            raise ValueError("since must be 0 or more")
        if not 1 <= limit <= MAX_PAGE:
            raise ValueError(f"limit must be 1..{MAX_PAGE}")
        first = self.first_seq
        start = max(seq + 1, first)
        missed = max(0, min(first, self._next) - (seq + 1))
        # events are numbered without gaps: the index of ``start`` is its distance from first
        index = start - first
        out = list(islice(self._events, index, index + limit))
        return {"events": out, "next": out[-1]["seq"] if out else max(seq, start - 1),
                "first": first, "last": self._next - 1, "missed": missed,
                "capacity": self.capacity}
