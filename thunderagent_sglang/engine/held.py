"""Calls held outside SGLang's queue while their program is paused or not admitted yet.

No SGLang import: a held call is its ids, when it arrived, the decode headroom it may need,
and ``admit``, the function that hands it to SGLang. ``admit(False)`` hands it over without
our arrival bookkeeping (an abort or a shutdown answers it at once through SGLang's own abort
path). Counts are kept as calls come and go, so nothing here walks every held call.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterator


@dataclasses.dataclass
class Held:
    program_id: str
    rid: str
    since: float
    max_new: int
    admit: Callable[..., object]
    chain: object = None  # its prompt's demand chain, hashed when it was held


class HeldCalls:
    """Held calls by program, each program's in arrival order; programs in first-held order."""

    def __init__(self) -> None:
        self._by_program: dict[str, list[Held]] = {}
        self._count = 0
        self._headroom: dict[str, int] = {}

    def add(self, item: Held) -> bool:
        """Hold ``item``; True when it is its program's first held call."""
        calls = self._by_program.setdefault(item.program_id, [])
        calls.append(item)
        self._count += 1
        self._headroom[item.program_id] = self._headroom.get(item.program_id, 0) + item.max_new
        return len(calls) == 1

    def pop(self, program_id: str) -> list[Held]:
        """Remove and return a program's held calls, oldest first."""
        calls = self._by_program.pop(program_id, [])
        self._count -= len(calls)
        self._headroom.pop(program_id, None)
        return calls

    def take(self, matches: Callable[[Held], bool]) -> list[Held]:
        """Remove and return every held call ``matches`` accepts, in held order (the programs
        keep their places)."""
        taken = []
        for program_id in list(self._by_program):
            keep, hit = [], []
            for item in self._by_program[program_id]:
                (hit if matches(item) else keep).append(item)
            if not hit:
                continue
            taken.extend(hit)
            if not keep:
                self.pop(program_id)
                continue
            self._by_program[program_id] = keep
            self._count -= len(hit)
            self._headroom[program_id] -= sum(item.max_new for item in hit)
        return taken

    def take_all(self) -> list[Held]:
        return self.take(lambda item: True)

    def count(self, program_id: str | None = None) -> int:
        if program_id is None:
            return self._count
        return len(self._by_program.get(program_id, ()))

    def first_since(self, program_id: str) -> float | None:
        calls = self._by_program.get(program_id)
        return calls[0].since if calls else None

    def headroom(self, program_id: str) -> int:
        """Decode tokens the program's held calls may add."""
        return self._headroom.get(program_id, 0)

    def items(self) -> list[Held]:
        """Every held call, programs in first-held order, each program's oldest first."""
        return [item for calls in self._by_program.values() for item in calls]

    def programs(self) -> Iterator[str]:
        """Programs with a held call, first held first (a copy: safe to change while reading)."""
        return iter(list(self._by_program))

    def __contains__(self, program_id: object) -> bool:
        return program_id in self._by_program
