"""The fronts a ``sim.fleet.Fleet`` can put before its replicas.

- ``Gateway``: SGLang's gateway (smg ``cache_aware``) as ``policy.placement.place_untagged``
  models it: every call on its own, to the replica holding most of its prompt when that is at
  least half of it and the replica is not much busier, else to the least busy. The match is the
  replica's real cache (smg keeps an approximate tree of what it routed).
- ``Router``: ours, the router's own pure policy (``policy.placement``) over replicas running
  ``sim.policies.Thunder``: a new program goes where ``place_new`` says, a program stays on its
  replica, and each poll ``plan_moves`` moves waiting programs (released on the old replica,
  their held calls sent to the new one; not moved again before a call of it finished there).
  Its view of a replica is exact and fresh at each decision, where the real router's is its
  last poll (0.5 s).
- ``ProxyFront``: the published ThunderAgent proxy's ``tr`` rules (ThunderAgent-org/
  ThunderAgent at a7eef77, ``scheduler/router.py`` and ``backend/state.py``), over plain
  replicas: each program's whole context plus 100 tokens counted on its backend (no shared
  prefix: the proxy never refreshes its ``shared_tokens``; acting programs in full, no decay),
  a new program placed where the fewest tokens are active if it fits and nobody waits, else
  queued; every 5 s the one global queue is resumed by best-fit-decreasing over the backends'
  room (programs with a request waiting first, then new ones, then the rest, each smallest
  first), then each backend over its pool pauses its acting programs (smallest first) and
  marks its reasoning ones (paused at their next finish). Token counts are the calls' own
  (the proxy's character-based guess is corrected by each answer's usage); ``estimate``
  scales a prompt's count before its answer, as a guess would. Not modelled: the 30-minute
  forced resume.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from thunderagent_sglang.policy import placement
from thunderagent_sglang.policy.placement import ReplicaLoad
from thunderagent_sglang.policy.snapshot import PAUSED


class Gateway:
    def attach(self, fleet) -> None:
        self.fleet = fleet
        self.calls = {r.name: 0 for r in fleet.replicas}
        self.by_name = {r.name: r for r in fleet.replicas}

    def route(self, call, now: float) -> None:
        loads = [ReplicaLoad(r.name, True, r.cache.capacity * r.block, 0, 0, 0.0,
                             calls=self.calls[r.name]) for r in self.fleet.replicas]
        matched = {r.name: r.cache.match(call.prompt_keys) for r in self.fleet.replicas}
        self._send(placement.place_untagged(loads, matched, len(call.prompt_keys)), call, now)

    def _send(self, name: str, call, now: float) -> None:
        self.calls[name] += 1
        self.fleet.submit(self.by_name[name], call, now)

    def finished(self, replica, call, now: float) -> None:
        self.calls[replica.name] -= 1

    def ended(self, program_id: str, now: float) -> None:
        pass

    def next_time(self) -> float:
        return float("inf")

    def act(self, now: float) -> None:
        pass


class Router(Gateway):
    def __init__(self, poll_s: float = 0.5, max_wait_s: float = 300.0, migration: bool = True):
        self.poll_s, self.max_wait_s, self.migration = poll_s, max_wait_s, migration
        self.placement: dict[str, str] = {}
        self.waiting_since: dict[str, float] = {}
        self.moved_unrun: set[str] = set()  # moved, no call of it finished on its new replica
        self.rates: dict[str, float | None] = {}
        self.next_poll = 0.0

    def load(self, replica) -> ReplicaLoad:
        policy, cfg = replica.policy, replica.policy.config
        waiting = sum(policy.ledger.context_tokens(pid) for pid, p in policy.programs.items()
                      if p.held and p.status == PAUSED and pid in policy.ledger)
        return ReplicaLoad(replica.name, True, cfg.capacity_tokens, int(cfg.high_tokens),
                           int(cfg.low_tokens), policy.last_footprint, waiting_tokens=waiting,
                           calls=self.calls[replica.name],
                           prefill_tokens_per_s=self._prefill_rate(replica))

    def _prefill_rate(self, replica) -> float | None:
        """Its cost model's prefill tokens per second (the engine's meter's figure), taken on
        a 4096-token prefill."""
        if replica.name not in self.rates:
            seconds = replica.cost.step_s([(4096, 4096)], [])
            self.rates[replica.name] = 4096 / seconds if seconds > 0 else None
        return self.rates[replica.name]

    def route(self, call, now: float) -> None:
        name = self.placement.get(call.program_id)
        if name is None:
            matched = {r.name: r.cache.match(call.prompt_keys) for r in self.fleet.replicas}
            name = placement.place_new([self.load(r) for r in self.fleet.replicas], matched)
            self.placement[call.program_id] = name
        self._send(name, call, now)

    def finished(self, replica, call, now: float) -> None:
        super().finished(replica, call, now)
        if self.placement.get(call.program_id) == replica.name:
            self.moved_unrun.discard(call.program_id)

    def ended(self, program_id: str, now: float) -> None:
        self.placement.pop(program_id, None)
        self.waiting_since.pop(program_id, None)
        self.moved_unrun.discard(program_id)

    def next_time(self) -> float:
        return self.next_poll if self.migration else float("inf")

    def act(self, now: float) -> None:
        self.next_poll = now + self.poll_s
        waiting = []
        for replica in self.fleet.replicas:
            policy = replica.policy
            for pid, p in policy.programs.items():
                if p.held and p.status == PAUSED and pid in policy.ledger:
                    may_move = pid not in self.moved_unrun
                    waited = now - self.waiting_since.setdefault(pid, now) if may_move else 0.0
                    reusable = replica.cache.match(p.held[0].prompt_keys) * replica.block
                    waiting.append(placement.Waiting(pid, replica.name,
                                                     policy.ledger.context_tokens(pid),
                                                     reusable, waited, may_move=may_move))
        still = {w.program_id for w in waiting if w.may_move}
        for pid in [p for p in self.waiting_since if p not in still]:
            del self.waiting_since[pid]
        loads = [self.load(r) for r in self.fleet.replicas]
        for move in placement.plan_moves(loads, waiting, self.max_wait_s, self.poll_s):
            self._move(move, now)

    def _move(self, move, now: float) -> None:
        source, target = self.by_name[move.source], self.by_name[move.target]
        held = source.policy.programs[move.program_id].held
        source.policy.ended(move.program_id, now)  # released there, cause "migrated"
        self.calls[source.name] -= len(held)
        self.placement[move.program_id] = target.name
        self.waiting_since.pop(move.program_id, None)
        self.moved_unrun.add(move.program_id)
        self.fleet.stats.migrations += 1
        for call in held:
            self._send(target.name, call, now)


BUFFER_PER_PROGRAM = 100  # the proxy's backend/state.py


@dataclass(eq=False)
class _ProxyProgram:
    tokens: int = 0
    steps: int = 0
    reasoning: bool = True
    backend: str | None = None
    origin: str | None = None
    paused: bool = False
    marked: bool = False
    held: list = field(default_factory=list)
    queued_tokens: int = 0  # its tokens when it joined the queue (the queue's order)


class ProxyFront(Gateway):
    def __init__(self, tick_s: float = 5.0, estimate: float = 1.0):
        self.tick_s, self.estimate = tick_s, estimate
        self.programs: dict[str, _ProxyProgram] = {}
        self.queue: dict[str, None] = {}  # insertion-ordered
        self.next_tick = tick_s

    def attach(self, fleet) -> None:
        super().attach(fleet)
        self.capacity = {r.name: r.cache.capacity * r.block for r in fleet.replicas}

    # ---- the backends' books -----------------------------------------------------------------

    def _on(self, name: str) -> list[_ProxyProgram]:
        return [p for p in self.programs.values() if p.backend == name and not p.paused]

    def remaining(self, name: str) -> int:
        on = self._on(name)
        return self.capacity[name] - sum(p.tokens for p in on) - BUFFER_PER_PROGRAM * len(on)

    # ---- calls -------------------------------------------------------------------------------

    def route(self, call, now: float) -> None:
        p = self.programs.setdefault(call.program_id, _ProxyProgram())
        p.steps += 1
        p.tokens, p.reasoning = int(call.prompt_tokens * self.estimate), True
        if p.paused:
            p.held.append(call)
            return
        if p.steps == 1 and p.backend is None:
            name = self._new_backend(p.tokens)
            if name is None:
                self._pause(call.program_id, p)
                p.held.append(call)
                return
            p.backend = name
        self._send(p.backend, call, now)

    def _new_backend(self, tokens: int) -> str | None:
        if self.queue:
            return None
        fits = [r.name for r in self.fleet.replicas
                if self.remaining(r.name) >= tokens + BUFFER_PER_PROGRAM]
        active = {n: sum(p.tokens for p in self._on(n)) for n in fits}
        return min(fits, key=lambda n: active[n]) if fits else None  # first of equals

    def finished(self, replica, call, now: float) -> None:
        super().finished(replica, call, now)
        p = self.programs.get(call.program_id)
        if p is None:
            return
        p.reasoning, p.tokens = False, call.prompt_tokens + call.output_tokens
        if p.marked:
            p.marked = False
            self._pause(call.program_id, p)

    def ended(self, program_id: str, now: float) -> None:
        self.programs.pop(program_id, None)
        self.queue.pop(program_id, None)

    def _pause(self, pid: str, p: _ProxyProgram) -> None:
        p.origin, p.backend, p.paused, p.queued_tokens = p.backend, None, True, p.tokens
        self.queue[pid] = None

    # ---- the 5 s check -----------------------------------------------------------------------

    def next_time(self) -> float:
        return self.next_tick

    def act(self, now: float) -> None:
        self.next_tick = now + self.tick_s
        self._resume(now)
        for replica in self.fleet.replicas:
            if self.remaining(replica.name) < 0:
                self._pause_until_safe(replica.name)

    def _pause_until_safe(self, name: str) -> None:
        while self.remaining(name) < 0:
            on = [(p.tokens, pid) for pid, p in self.programs.items()
                  if p.backend == name and not p.paused]
            acting = sorted((t, pid) for t, pid in on if not self.programs[pid].reasoning)
            if acting:
                self._pause(acting[0][1], self.programs[acting[0][1]])
                continue
            reasoning = sorted((t, pid) for t, pid in on if self.programs[pid].reasoning
                               and not self.programs[pid].marked)
            if not reasoning:
                return
            self.programs[reasoning[0][1]].marked = True  # the proxy's loop marks them all

    def _resume(self, now: float) -> None:
        caps = [[self.remaining(r.name), r.name] for r in self.fleet.replicas]
        caps = [c for c in caps if c[0] > BUFFER_PER_PROGRAM]
        total = sum(c[0] for c in caps)
        if not caps or not self.queue:
            return
        queued = sorted(self.queue, key=lambda pid: self.programs[pid].queued_tokens)
        groups = ([q for q in queued if self.programs[q].steps > 1
                   and self.programs[q].reasoning],
                  [q for q in queued if self.programs[q].steps == 1],
                  [q for q in queued if self.programs[q].steps > 1
                   and not self.programs[q].reasoning])
        chosen, cumulative = [], 0
        for pid in (pid for group in groups for pid in group):
            need = self.programs[pid].tokens + BUFFER_PER_PROGRAM
            if cumulative + need <= total:
                chosen.append(pid)
                cumulative += need
        chosen.sort(key=lambda pid: -self.programs[pid].tokens)
        caps.sort(key=lambda c: -c[0])
        smallest = self.programs[chosen[-1]].tokens + BUFFER_PER_PROGRAM if chosen else 0
        for pid in chosen:
            if not caps or smallest > caps[0][0]:
                break
            need = self.programs[pid].tokens + BUFFER_PER_PROGRAM
            if need > caps[0][0]:
                continue
            self._resume_on(pid, caps[0][1], now)
            caps[0][0] -= need
            if caps[0][0] > BUFFER_PER_PROGRAM:
                caps.sort(key=lambda c: -c[0])
            else:
                caps.pop(0)

    def _resume_on(self, pid: str, name: str, now: float) -> None:
        p = self.programs[pid]
        del self.queue[pid]
        if p.origin is not None and p.origin != name:
            self.fleet.stats.migrations += 1
        p.backend, p.origin, p.paused = name, None, False
        held, p.held = p.held, []
        for call in held:
            self._send(name, call, now)
