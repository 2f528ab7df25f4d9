"""Several engine replicas behind one front, on one clock (the runner's fleet mode).

Each replica is a ``sim.engine.Engine`` with its own pool, cost and policy; the agents belong
to the fleet: a call goes to its front, which places it on a replica (or holds it), and when
it finishes the fleet schedules the program's next call after its tool wait. Events run in
time order: the earliest of the next arrival, each busy replica's next step (at its clock),
each idle replica's next policy tick and the front's next periodic round. A step is atomic,
so a call that arrives during a replica's step waits for its end, as a real scheduler reads
new requests between steps.

Fronts (``sim/fronts.py``): ``Gateway`` (SGLang's gateway, cache-aware, over plain replicas),
``Router`` (ours: ``policy.placement`` over replicas running ``Thunder``) and ``ProxyFront``
(the published ThunderAgent proxy's rules, over plain replicas).
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field

from benchmarks.agentic import workload
from sim.engine import Engine, SimCall, make_call


class Replica(Engine):
    """An engine whose calls come from a fleet and whose finished calls go back to it."""

    def __init__(self, name: str, fleet: "Fleet", policy, **engine):
        super().__init__(policy, slots=0, **engine)
        self.name, self.fleet = name, fleet

    def on_finished(self, call: SimCall) -> None:
        self.fleet.finished(self, call)

    def on_rejected(self, call: SimCall) -> None:
        self.fleet.rejected(self, call)

    @property
    def busy(self) -> bool:
        return bool(self.waiting or self.running)

    def next_time(self) -> float:
        return self.now if self.busy else self.policy.next_tick(self.now)

    def act(self, t: float) -> None:
        """Its policy's tick, then one step if it has work (``Engine.run``'s loop body)."""
        self.now = max(self.now, t)
        self.release(self.policy.tick(self.now))
        if self.busy:
            self._step()

    def used_blocks(self) -> int:
        """Blocks held by running calls (SGLang's ``token_usage`` numerator): their locked
        prefixes and what they reserved."""
        return self.reserved + sum(c.locked for c in self.running)


@dataclass
class FleetStats:
    finished: list[float] = field(default_factory=list)
    calls: list[tuple[float, int, int]] = field(default_factory=list)  # finish, prompt, cached
    usage: list[list[float]] = field(default_factory=list)  # per second: each replica's share
    migrations: int = 0
    rejected: int = 0

    def calls_per_min(self, start: float, end: float) -> float:
        return sum(1 for t in self.finished if start <= t < end) * 60.0 / (end - start)

    def hit_rate(self, start: float = 0.0, end: float = float("inf")) -> float:
        window = [(p, c) for t, p, c in self.calls if start <= t < end]
        total = sum(p for p, _ in window)
        return sum(c for _, c in window) / total if total else 0.0

    def imbalance(self, start: float, end: float) -> float:
        """Time-mean of max - min of the replicas' shares held by running calls."""
        rows = [u for i, u in enumerate(self.usage) if start <= i < end]
        return sum(max(u) - min(u) for u in rows) / len(rows) if rows else 0.0


class Fleet:
    def __init__(self, front, make_policy, *, replicas: int, capacity_tokens: int, block: int,
                 cost, spec: workload.WorkloadSpec = workload.WorkloadSpec(), seed: int = 0,
                 slots: int = 8, source=None, prefill_tokens: int = 4096):
        """``make_policy()``: each replica's policy; ``source(slot, index)``: the slot's
        index-th program or None (default: the runner's serving stream)."""
        self.front, self.block, self.spec, self.seed, self.slots = front, block, spec, seed, slots
        self.source = source or (lambda slot, index: workload.serving_program(
            spec, seed, slot, index))
        self.replicas = [Replica(f"r{i}", self, make_policy(), capacity_tokens=capacity_tokens,
                                 block=block, prefill_tokens=prefill_tokens, cost=cost,
                                 spec=spec, seed=seed) for i in range(replicas)]
        self.now = 0.0
        self.stats = FleetStats()
        self._events: list = []
        self._seq = itertools.count()
        self._programs: dict[int, tuple[workload.Program, list, int]] = {}
        self.live = 0  # programs started and not ended
        front.attach(self)

    # ---- agents ------------------------------------------------------------------------------

    def _next_program(self, slot: int, index: int, at: float) -> None:
        program = self.source(slot, index)
        if program is not None:
            self.live += 1
            self._programs[slot] = (program, workload.prompts(program), index)
            heapq.heappush(self._events, (at, next(self._seq), slot, 0))

    def finished(self, replica: Replica, call: SimCall) -> None:
        now = replica.now
        self.stats.finished.append(now)
        self.stats.calls.append((now, call.prompt_tokens,
                                 min(call.matched * self.block, call.prompt_tokens)))
        self.front.finished(replica, call, now)
        program, _, index = self._programs[call.slot]
        if call.last:
            self.live -= 1
            self.front.ended(call.program_id, now)
            self._next_program(call.slot, index + 1, now)
        else:
            heapq.heappush(self._events, (now + program.calls[call.turn + 1].tool_wait_s,
                                          next(self._seq), call.slot, call.turn + 1))

    def rejected(self, replica: Replica, call: SimCall) -> None:
        self.stats.rejected += 1
        self.live -= 1
        self.front.ended(call.program_id, replica.now)
        self._next_program(call.slot, self._programs[call.slot][2] + 1, replica.now)

    def submit(self, replica: Replica, call: SimCall, now: float) -> None:
        """A call handed to a replica now (by the front)."""
        replica.now = max(replica.now, now)
        replica.submit(call)

    # ---- the clock ---------------------------------------------------------------------------

    def run(self, until: float) -> FleetStats:
        """Until ``until`` or, sooner, until every program has ended (a finite source)."""
        for slot in range(self.slots):
            self._next_program(slot, 0, 0.0)
        sample_at = 0.0
        while self.live:
            arrival = self._events[0][0] if self._events else float("inf")
            replica = min(self.replicas, key=lambda r: (r.next_time(), r.name))
            front = self.front.next_time()
            t = min(arrival, replica.next_time(), front)
            while sample_at <= min(t, until):
                self._sample()
                sample_at += 1.0
            if t >= until:
                break
            self.now = t
            if arrival == t:
                _, _, slot, turn = heapq.heappop(self._events)
                program, prompts, _ = self._programs[slot]
                self.front.route(make_call(program, prompts, turn, self.block, t, slot), t)
            elif front == t:
                self.front.act(t)
            else:
                replica.act(t)
        return self.stats

    def _sample(self) -> None:
        self.stats.usage.append([r.used_blocks() / r.cache.capacity for r in self.replicas])
