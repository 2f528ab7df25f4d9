"""What the router remembers: each program's replica, programs whose replica was lost, and
the replica-local state other calls depend on (Responses ids, SGLang sessions)."""

from __future__ import annotations

import asyncio
from collections import OrderedDict

MAX_REMEMBERED = 100_000


class Bounded(OrderedDict):
    """A dict that forgets its oldest entries beyond ``limit``."""

    def __init__(self, limit: int = MAX_REMEMBERED):
        super().__init__()
        self.limit = limit

    def __setitem__(self, key, value):
        super().__setitem__(key, value)
        self.move_to_end(key)
        while len(self) > self.limit:
            self.popitem(last=False)


class RouterState:
    def __init__(self):
        self.placement: dict[str, str] = {}  # program id -> replica url
        self.lost: Bounded = Bounded()  # program id -> the replica that was taken out with it
        self.moved: Bounded = Bounded()  # program id -> the replica it was moved from
        self.responses: Bounded = Bounded()  # Responses id -> replica url
        self.sessions: Bounded = Bounded()  # SGLang session id -> replica url
        self.waiting_since: dict[str, float] = {}  # program id -> first seen waiting
        self.moving: dict[str, asyncio.Event] = {}  # program id -> set once its move is done
        self.counters = {"placed": 0, "migrations": 0, "migrations_refused": 0,
                         "resent": 0, "retried_connect": 0, "resent_after_failure": 0,
                         "failed_upstream": 0,
                         "replaced_lost": 0}

    def replica_down(self, url: str) -> int:
        """Programs on a replica that was taken out: their KV is lost; their next call is
        placed again. Returns how many."""
        gone = [pid for pid, where in self.placement.items() if where == url]
        for pid in gone:
            del self.placement[pid]
            self.lost[pid] = url
            self.waiting_since.pop(pid, None)
        for table in (self.responses, self.sessions):
            for key in [k for k, where in table.items() if where == url]:
                del table[key]
        return len(gone)

    def forget_ended(self, url: str, live: set[str], pending: set[str]) -> None:
        """Programs placed on ``url`` that its poll no longer lists (ended there) are placed
        afresh on their next call."""
        for pid in [p for p, where in self.placement.items()
                    if where == url and p not in live and p not in pending
                    and p not in self.moving]:
            del self.placement[pid]
            self.waiting_since.pop(pid, None)
