"""Pure: where a program runs among replicas, and which paused programs move (the router).

Inputs are each replica's exact figures (its scheduler's footprint, watermarks and programs,
from ``GET /programs``), never token counts guessed from text. The router calls these with
fresh snapshots; the cluster simulator can call them with its own.

Two levels share the work: each replica's in-engine scheduler decides pauses, holds and
resumes exactly for its own pool, every step; the router places new programs and moves a
program whose call waits on a full replica to one with room, when re-prefilling it there costs
less than waiting (one paused queue across replicas, as the paper's).
"""

from __future__ import annotations

from dataclasses import dataclass

TIE_FRACTION = 1 / 32  # free capacities this close (of the smaller pool) are a tie
DEFAULT_PREFILL_TOKENS_PER_S = 5000.0


@dataclass(frozen=True)
class ReplicaLoad:
    """One replica as its last poll (plus the router's own placements since) shows it."""

    name: str
    ready: bool
    capacity_tokens: int
    high_tokens: int
    low_tokens: int  # its scheduler admits and resumes while its measure stays below this
    footprint_tokens: float  # its scheduler's measure after its last decision
    waiting_tokens: int = 0  # demand of its own programs whose calls it holds (its queue)
    pending_tokens: int = 0  # programs the router placed there that no poll shows yet
    calls: int = 0  # calls the router has sent there and not yet seen answered
    placed: int = 0  # programs the router placed there that no poll shows yet
    prefill_tokens_per_s: float | None = None

    @property
    def free_tokens(self) -> float:
        """Demand it can take now: below its low watermark (where its scheduler admits new
        programs and resumes paused ones), after its own queue and the router's placements."""
        return self.low_tokens - self.footprint_tokens - self.waiting_tokens - self.pending_tokens

    @property
    def prefill_rate(self) -> float:
        return self.prefill_tokens_per_s or DEFAULT_PREFILL_TOKENS_PER_S


def place_new(loads: list[ReplicaLoad], matched: dict[str, int]) -> str | None:
    """A new program: the replica with the most free demand capacity; within a tie, the one
    holding the longest prefix of its first prompt (``matched``: chunks per replica), then the
    fewest calls and programs placed since the last poll, then the name. None when no replica
    is ready."""
    ready = [r for r in loads if r.ready]
    if not ready:
        return None
    best_free = max(r.free_tokens for r in ready)
    tie = min(r.capacity_tokens for r in ready) * TIE_FRACTION
    tied = [r for r in ready if r.free_tokens >= best_free - tie]
    return min(tied, key=lambda r: (-matched.get(r.name, 0), r.calls + r.placed,
                                    -r.free_tokens, r.name)).name


def place_untagged(loads: list[ReplicaLoad], matched: dict[str, int], chunks: int,
                   balance_calls: int = 4) -> str | None:
    """An untagged call, as SGLang's gateway places it: the replica that has seen most of its
    prompt when that is at least half of it and the replica is not busier than the least busy
    by more than ``balance_calls``; otherwise the least busy (then the most free)."""
    ready = [r for r in loads if r.ready]
    if not ready:
        return None
    least = min(r.calls for r in ready)
    best = max(ready, key=lambda r: (matched.get(r.name, 0), -r.calls))
    if chunks and 2 * matched.get(best.name, 0) >= chunks and best.calls <= least + balance_calls:
        return best.name
    return min(ready, key=lambda r: (r.calls, -r.free_tokens, r.name)).name


@dataclass(frozen=True)
class Waiting:
    """A program whose call its replica holds (paused, or not admitted yet)."""

    program_id: str
    replica: str
    context_tokens: int  # its demand: what it needs wherever it runs
    reusable_tokens: int  # its KV still on its replica (device and host)
    waited_s: float  # since the router first saw it waiting
    priority: int = 0
    may_move: bool = True  # False: moved here and no call of it has run here yet


@dataclass(frozen=True)
class Move:
    program_id: str
    source: str
    target: str
    stay_s: float  # expected cost of staying: waiting plus recompute there
    move_s: float  # expected cost of moving: recompute of its context on the target


def plan_moves(loads: list[ReplicaLoad], waiting: list[Waiting], max_wait_s: float,
               min_wait_s: float = 0.0, storage_tokens_per_s: float = 0.0) -> list[Move]:
    """Which waiting programs move, and where. In restore order (higher priority, then
    smallest first), a program moves when its own replica cannot take it now, another can
    (its free capacity covers the program's whole context), and re-prefilling there costs less
    than staying: the time it has already waited (what it can expect to wait again: a wait's
    expected remainder grows with its age under heavy-tailed tool times) plus recomputing what
    its replica no longer holds. One that has waited ``max_wait_s`` stays (its replica
    resumes it by force), so the two levels' holds stay within one bound. One that may not
    move (``may_move`` False: moved to its replica, no call of it run there yet; else two
    replicas that fill in turn pass it back and forth) stays, and its own replica's room
    counts it as next there like any program that stays.

    ``storage_tokens_per_s``: the replicas share a KV storage tier (SGLang's HiCache storage,
    written through) that loads this fast: a program's KV is in storage wherever it ran, so
    moving it costs loading its context there, and staying costs loading what its replica
    no longer holds, instead of recomputing either."""
    free = {r.name: r.free_tokens for r in loads if r.ready}
    for w in waiting:  # its own demand is in its replica's queue: not in the way of itself
        if w.replica in free:
            free[w.replica] += w.context_tokens
    rates = {r.name: storage_tokens_per_s or r.prefill_rate for r in loads}
    moves = []
    for w in sorted(waiting, key=lambda w: (-w.priority, w.context_tokens, w.program_id)):
        if not w.may_move:
            if free.get(w.replica, 0) >= w.context_tokens:
                free[w.replica] -= w.context_tokens  # its own replica takes it next
            continue
        if not min_wait_s <= w.waited_s < max_wait_s or w.replica not in rates:
            continue
        if free.get(w.replica, 0) >= w.context_tokens:
            free[w.replica] -= w.context_tokens  # its own replica takes it next
            continue
        targets = [n for n, f in free.items() if n != w.replica and f >= w.context_tokens]
        if not targets:
            continue
        target = max(targets, key=lambda n: (free[n], n))
        stay_s = w.waited_s + (w.context_tokens - w.reusable_tokens) / rates[w.replica]
        move_s = w.context_tokens / rates[target]
        if move_s < stay_s:
            free[target] -= w.context_tokens
            moves.append(Move(w.program_id, w.replica, target, stay_s, move_s))
    return moves
