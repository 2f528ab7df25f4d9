"""Which live programs are idle and when each expires (pure Python, owned by the table).

A program counts toward idle expiry while ``Program.idle`` holds (acting, no call held, not
paused by an operator). It expires ``span`` seconds after ``idle_since``: the table's idle
expiry, or twice a running tool's ``expected_s`` when that is longer (a tool ``start`` whose
``end`` never comes protects the program that long, never less than the idle expiry).

Programs with the plain span sit in one ordered dict, oldest ``idle_since`` first (the table
touches a program with a clock that never goes back, so appending keeps the order); the few
with a longer span sit in a heap. Every change is O(1) or O(log long); ``due`` is
O(expired + stale + 1).
"""

from __future__ import annotations

import heapq
from collections import OrderedDict

from thunderagent_sglang.program.record import Program


class ExpiryIndex:
    def __init__(self, idle_expiry_s: float):
        self.idle_expiry_s = idle_expiry_s
        self._plain: OrderedDict[str, Program] = OrderedDict()
        self._long: dict[str, tuple[float, Program]] = {}  # program id -> (deadline, program)
        self._heap: list[tuple[float, str]] = []  # (deadline, program id); stale entries allowed

    def update(self, p: Program) -> None:
        """File ``p`` by its current state (after ``idle_since`` or its state changed)."""
        self.remove(p.program_id)
        if not p.idle:
            return
        span = p.idle_span(self.idle_expiry_s)
        if span <= self.idle_expiry_s:
            self._plain[p.program_id] = p
            return
        deadline = p.idle_since + span
        self._long[p.program_id] = (deadline, p)
        heapq.heappush(self._heap, (deadline, p.program_id))
        if len(self._heap) > 2 * len(self._long) + 16:  # drop stale entries now and then
            self._heap = [(d, pid) for pid, (d, _) in self._long.items()]
            heapq.heapify(self._heap)

    def remove(self, program_id: str) -> None:
        self._plain.pop(program_id, None)
        self._long.pop(program_id, None)

    def due(self, now: float) -> list[Program]:
        """Remove and return the programs idle past their span at ``now``, plain ones first,
        each group oldest first."""
        due = []
        while self._plain:
            p = next(iter(self._plain.values()))
            if not now - p.idle_since > self.idle_expiry_s:
                break
            del self._plain[p.program_id]
            due.append(p)
        while self._heap and now > self._heap[0][0]:
            deadline, program_id = heapq.heappop(self._heap)
            entry = self._long.get(program_id)
            if entry is not None and entry[0] == deadline:
                del self._long[program_id]
                due.append(entry[1])
        return due

    def __contains__(self, program_id: object) -> bool:
        return program_id in self._plain or program_id in self._long

    def __len__(self) -> int:
        return len(self._plain) + len(self._long)
