"""The systems the simulator compares, each a small policy over the engine model.

- ``Plain``: per-request LRU eviction, never holds a call (plain SGLang's radix cache).
- ``Limit``: ``Plain`` with a pool that never evicts (the engine is built with a capacity
  above the whole workload; see ``sim.__main__``).
- ``Thunder``: ours, through the engine's own pure policy code: ``policy.scheduling.decide``
  on snapshots built as ``engine/program_pausing.py`` builds them (arrival, finish, tick),
  ``policy.demand.DemandLedger`` and ``policy.footprint.ledger_footprint`` for the exact
  demand, ``policy.eviction`` for the eviction rank of every block from its programs' states.
  Not modelled yet: the host tier (offload off), untagged traffic, the tool-duration model's
  predicted return, priorities and aging beyond what ``decide`` does by itself.

A policy answers: ``attach(engine)``, ``rank(block, now)`` (smallest evicted first),
``arrive(call, now)`` (True: queue it now; False: held), ``finished(call, now)``,
``ended(program_id, now)``, ``tick(now)`` (held calls to release), ``next_tick(now)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from thunderagent_sglang.policy.demand import DemandLedger
from thunderagent_sglang.policy.eviction import ProgramState, node_key, program_key
from thunderagent_sglang.policy.footprint import ledger_footprint
from thunderagent_sglang.policy.scheduling import decide
from thunderagent_sglang.policy.snapshot import (ACTING, ACTIVE, PAUSED, REASONING,
                                                 ProgramView, SchedulerConfig)


class Plain:
    name = "plain"

    def attach(self, engine) -> None:
        self.engine = engine

    def rank(self, block, now: float) -> tuple:
        return (block.last_used,)

    def arrive(self, call, now: float) -> bool:
        return True

    def finished(self, call, now: float) -> None:
        pass

    def ended(self, program_id: str, now: float) -> None:
        pass

    def tick(self, now: float) -> list:
        return []

    def next_tick(self, now: float) -> float:
        return float("inf")


@dataclass(eq=False)
class _Program:
    status: str = PAUSED
    phase: str = ACTING
    phase_since: float = 0.0
    status_since: float = 0.0
    admitted: bool = False  # a new program is paused with is_new until first resumed
    marked: bool = False
    held: list = field(default_factory=list)
    headroom: int = 0  # output tokens its running call may still add


class Thunder(Plain):
    name = "ours"

    def __init__(self, config: SchedulerConfig | None = None, tick_s: float = 0.5):
        self.config_given, self.tick_s = config, tick_s
        self.programs: dict[str, _Program] = {}
        self.ledger: DemandLedger | None = None
        self._last_tick = 0.0
        self.pauses = 0

    def attach(self, engine) -> None:
        self.engine = engine
        self.ledger = DemandLedger(engine.block)
        self.config = self.config_given or SchedulerConfig(
            capacity_tokens=engine.cache.capacity * engine.block)

    # ---- eviction --------------------------------------------------------------------------

    def rank(self, block, now: float) -> tuple:
        keys = [self._key(pid, now) for pid in block.owners if pid in self.programs]
        cls, value = node_key(keys, retired=bool(block.owners))
        return cls, value, block.last_used

    def _key(self, pid: str, now: float) -> tuple[int, float]:
        p = self.programs[pid]
        context = self.ledger.context_tokens(pid) if pid in self.ledger else 0
        return program_key(ProgramState(
            paused=p.status == PAUSED, reasoning=p.phase == REASONING, context_tokens=context,
            tool_seconds=now - p.phase_since if p.phase == ACTING else 0.0),
            self.config.half_life_s)

    # ---- the scheduler ---------------------------------------------------------------------

    def arrive(self, call, now: float) -> bool:
        pid = call.program_id
        p = self.programs.get(pid)
        if p is None:
            p = self.programs[pid] = _Program(status_since=now, phase_since=now)
        self._set_context(pid, call.prompt_chain)
        if p.status == ACTIVE:
            self._reason(p, call, now)
            self.engine.release(self._decide(now))
            return True
        p.held.append(call)
        self.engine.release(self._decide(now))
        return False

    def _reason(self, p: _Program, call, now: float) -> None:
        p.phase, p.phase_since, p.headroom = REASONING, now, call.output_tokens

    def finished(self, call, now: float) -> None:
        pid = call.program_id
        p = self.programs[pid]
        p.phase, p.phase_since, p.headroom = ACTING, now, 0
        self._set_context(pid, call.full_chain)
        if p.marked:  # paused at its tool boundary
            self._pause(pid, now)
        self.engine.release(self._decide(now))

    def ended(self, program_id: str, now: float) -> None:
        self.programs.pop(program_id, None)
        if program_id in self.ledger:
            self.ledger.remove(program_id)

    def tick(self, now: float) -> list:
        if now < self._last_tick + self.tick_s:  # the same sum as next_tick: no float gap
            return []
        return self._decide(now)

    def next_tick(self, now: float) -> float:
        held = any(p.held for p in self.programs.values())
        return self._last_tick + self.tick_s if held else float("inf")

    def _set_context(self, pid: str, chain) -> None:
        self.ledger.set_context(pid, chain)
        self.ledger.set_active(pid, self.programs[pid].status == ACTIVE)

    def _views(self, now: float) -> list[ProgramView]:
        views = []
        for pid, p in self.programs.items():
            if pid not in self.ledger:
                continue
            new = not p.admitted
            views.append(ProgramView(
                pid, p.status, p.phase, self.ledger.context_tokens(pid),
                tool_seconds=max(0.0, now - p.phase_since) if p.phase == ACTING else 0.0,
                waiting=bool(p.held), paused_seconds=(
                    max(0.0, now - (p.held[0].arrived_at if new else p.status_since))
                    if p.status == PAUSED else 0.0),
                marked=p.marked and p.status == ACTIVE,
                decode_headroom=p.headroom + sum(c.output_tokens for c in p.held),
                is_new=new and p.status == PAUSED and bool(p.held)))
        return views

    def _decide(self, now: float) -> list:
        self._last_tick = now
        decision = decide(self._views(now), self.config, ledger_footprint(self.ledger))
        for pid in decision.pause:
            self._pause(pid, now)
        for pid in decision.mark:
            self.programs[pid].marked = True
        for pid in decision.unmark:
            self.programs[pid].marked = False
        released = []
        for pid in decision.resume:
            p = self.programs[pid]
            p.status, p.status_since, p.admitted, p.marked = ACTIVE, now, True, False
            self.ledger.set_active(pid, True)
            if p.held:
                self._reason(p, p.held[-1], now)
            released += p.held
            p.held = []
        return released

    def _pause(self, pid: str, now: float) -> None:
        p = self.programs[pid]
        if p.status == ACTIVE:
            p.status, p.status_since, p.marked = PAUSED, now, False
            self.ledger.set_active(pid, False)
            self.pauses += 1
