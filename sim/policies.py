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
- ``EvictionOnly``: ours with the scheduler off (``--thunderagent-scheduler off``): every call
  admitted at once, ``policy.eviction``'s ranks only.
- ``Ttl``: Continuum-style pinning, as modelled here: after a program's call finishes its KV
  is kept for ``ttl_s`` (ranked after every unpinned block; still evicted when nothing else
  is left, so admission never deadlocks). Continuum learns the TTL from tool durations; here
  it is given (``sim run`` uses the workload's median tool wait).
- ``Proxy``: the published ThunderAgent proxy's rule, as modelled here: the same ``decide``,
  run only on a 5 s tick (a new program's first call waits for it), each program's tokens
  counted alone (no shared prefix) and scaled by ``estimate`` (the proxy guesses tokens from
  characters), no decay; eviction stays the engine's LRU (the proxy cannot reach it).

A policy answers: ``attach(engine)``, ``rank(block, now)`` (smallest evicted first),
``arrive(call, now)`` (True: queue it now; False: held), ``finished(call, now)``,
``ended(program_id, now)``, ``tick(now)`` (held calls to release), ``next_tick(now)``.
"""

from __future__ import annotations

import dataclasses
import statistics
from dataclasses import dataclass, field

from thunderagent_sglang.policy.batching import StepFit, decay_wanted
from thunderagent_sglang.policy.demand import DemandLedger
from thunderagent_sglang.policy.eviction import (ProgramState, host_node_key, node_key,
                                                 program_key)
from thunderagent_sglang.policy.footprint import Footprint, ledger_footprint
from thunderagent_sglang.policy.offload import CostModel, KvDecision
from thunderagent_sglang.policy.offload import decide as offload_decide
from thunderagent_sglang.policy.scheduling import decide
from thunderagent_sglang.policy.snapshot import (ACTING, ACTIVE, PAUSED, REASONING,
                                                 ProgramView, SchedulerConfig)


class Plain:
    name = "plain"

    def attach(self, engine) -> None:
        self.engine = engine

    def rank(self, block, now: float) -> tuple:
        return (block.last_used,)

    def host_rank(self, block, now: float) -> tuple:
        """The host tier's eviction order: least recently used first."""
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

    def on_decode_step(self, batch: int, seconds: float) -> None:
        pass


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
    attained: float = 0.0  # seconds reasoning in finished calls (the engine's attained service)


class Thunder(Plain):
    name = "ours"

    def __init__(self, config: SchedulerConfig | None = None, tick_s: float = 0.5,
                 settings: dict | None = None, decay: str = "auto", offload: bool = True):
        """``settings``: ``SchedulerConfig`` fields over the defaults (capacity: the pool's).
        ``decay``: the engine's ``--thunderagent-decay`` (auto: ``policy.batching.decay_wanted``
        on the simulated decode steps' fit); a ``decay`` in ``settings`` fixes it.
        ``offload``: with a host tier, a paused program's own KV is kept, offloaded or dropped
        by ``policy.offload`` (the engine's ``--thunderagent-offload auto``)."""
        self.config_given, self.tick_s, self.settings = config, tick_s, settings or {}
        self.decay_mode = "on" if "decay" in self.settings and self.settings["decay"] else (
            "off" if "decay" in self.settings else decay)
        self.steps_fit = StepFit()
        self.offload = offload
        self.offload_model: CostModel | None = None
        self.kv_decisions = {d.value: 0 for d in KvDecision}
        self.programs: dict[str, _Program] = {}
        self.ledger: DemandLedger | None = None
        self._last_tick = 0.0
        self.pauses = 0
        self.last_footprint = 0.0  # F after its last decision (the engine's footprint_tokens)

    def attach(self, engine) -> None:
        self.engine = engine
        self.ledger = DemandLedger(engine.block)
        settings = {**self.settings, "decay": self.decay_mode != "off"}
        self.config = self.config_given or SchedulerConfig(
            capacity_tokens=engine.cache.capacity * engine.block, **settings)
        if self.offload and getattr(engine, "host", None) is not None:
            self.offload_model = offload_model(engine)

    def on_decode_step(self, batch: int, seconds: float) -> None:
        self.steps_fit.add(batch, seconds)

    # ---- eviction --------------------------------------------------------------------------

    def rank(self, block, now: float) -> tuple:
        keys = [self._key(pid, now) for pid in block.owners if pid in self.programs]
        cls, value = node_key(keys, retired=bool(block.owners))
        return cls, value, block.last_used

    def host_rank(self, block, now: float) -> tuple:
        """``policy.eviction.host_node_key``: ended programs' KV first, then untagged, live
        programs' last; then least recently used."""
        live = any(pid in self.programs for pid in block.owners)
        return (*host_node_key(live, retired=bool(block.owners)), block.last_used)

    def _key(self, pid: str, now: float) -> tuple[int, float]:
        p = self.programs[pid]
        context = self.ledger.context_tokens(pid) if pid in self.ledger else 0
        return program_key(ProgramState(
            paused=p.status == PAUSED, reasoning=p.phase == REASONING, context_tokens=context,
            tool_seconds=now - p.phase_since if p.phase == ACTING else 0.0),
            self.config.half_life_s)

    # ---- the scheduler ---------------------------------------------------------------------

    def arrive(self, call, now: float) -> bool:
        queued = self.on_arrive(call, now)
        self.engine.release(self._decide(now))
        return queued

    def on_arrive(self, call, now: float) -> bool:
        """The arrival's change of state alone (no decision): True if the call is queued."""
        pid = call.program_id
        p = self.programs.get(pid)
        if p is None:
            p = self.programs[pid] = _Program(status_since=now, phase_since=now)
        self._set_context(pid, call.prompt_chain)
        if p.status == ACTIVE:
            self._reason(p, call, now)
            return True
        p.held.append(call)
        return False

    def _reason(self, p: _Program, call, now: float) -> None:
        if p.phase != REASONING:  # as the engine: a second call in flight keeps the phase's start
            p.phase, p.phase_since = REASONING, now
        p.headroom = call.output_tokens

    def finished(self, call, now: float) -> None:
        self.on_finish(call, now)  # a marked program is paused by the decision (as the engine)
        self.engine.release(self._decide(now))

    def on_finish(self, call, now: float) -> None:
        pid = call.program_id
        p = self.programs[pid]
        if p.phase == REASONING:
            p.attained += now - p.phase_since
        p.phase, p.phase_since, p.headroom = ACTING, now, 0
        self._set_context(pid, call.full_chain)

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
                tool_seconds=max(0.0, now - p.phase_since)
                if p.phase == ACTING and not new else 0.0,
                waiting=bool(p.held), paused_seconds=(
                    max(0.0, now - (p.held[0].arrived_at if new else p.status_since))
                    if p.status == PAUSED else 0.0),
                marked=p.marked and p.status == ACTIVE,
                decode_headroom=p.headroom + sum(c.output_tokens for c in p.held),
                is_new=new and p.status == PAUSED and bool(p.held),
                attained_s=p.attained + (now - p.phase_since if p.phase == REASONING
                                         and p.status == ACTIVE else 0.0)))
        return views

    def _footprint(self) -> Footprint:
        return ledger_footprint(self.ledger)

    def decision(self, now: float, untagged: int = 0):
        """``decide`` on this moment's snapshot; None without a live tagged program (as the
        engine: no decision then)."""
        self._last_tick = now
        if self.decay_mode == "auto":
            want = decay_wanted(self.steps_fit.shared_fraction(), self.config.decay)
            if want != self.config.decay:
                self.config = dataclasses.replace(self.config, decay=want)
        views = self._views(now)
        if not views:
            self.last_footprint = float(untagged)
            return None
        decision = decide(views, self.config, self._footprint(), untagged_tokens=untagged)
        self.last_footprint = decision.after_tokens
        return decision

    def _decide(self, now: float, untagged: int = 0) -> list:
        decision = self.decision(now, untagged)
        return self.apply(decision, now) if decision is not None else []

    def apply(self, decision, now: float) -> list:
        """Carry out a decision; the held calls it releases."""
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
            if self.offload_model is not None:
                self._keep_offload_or_drop(pid)

    def _keep_offload_or_drop(self, pid: str) -> None:
        """``policy.offload.decide`` on the program's own unlocked device blocks (shared with
        no other live program): offloaded ones go to the host tier now, dropped ones from
        both tiers; the engine's prefetch at resume is the host match at admission."""
        cache, host, block = self.engine.cache, self.engine.host, self.engine.block
        others = set(self.programs) - {pid}
        own = {b.key for b in cache.blocks.values()
               if pid in b.owners and not b.owners & others and not b.locks}
        unbacked = sum(1 for key in own if key not in host.blocks)
        choice = offload_decide(self.offload_model, len(own) * block, unbacked * block,
                                (host.capacity - len(host.blocks)) * block)
        self.kv_decisions[choice.decision.value] += 1
        if choice.decision is KvDecision.OFFLOAD:
            cache.remove(own, spill=True)
        elif choice.decision is KvDecision.DROP:
            cache.remove(own, spill=False)
            for key in own:
                host.blocks.pop(key, None)


OFFLOAD_LATENCY_S = 5e-6  # one load-back's fixed cost: this CPU's link as the engine measures


def offload_model(engine) -> CostModel:
    """The engine's offload cost model for a simulated engine: loads at its
    ``host_load_token_s`` (bytes per token 1, so bandwidth is tokens per second), recompute at
    its cost model's rate on a 4096-token prefill."""
    load = engine.host_load_token_s
    seconds = engine.cost.step_s([(4096, 4096)], [])
    return CostModel(1, 1.0 / load if load > 0 else 1e18, OFFLOAD_LATENCY_S,
                     4096 / seconds if seconds > 0 else None)


class EvictionOnly(Thunder):
    name = "ours-sched-off"

    def arrive(self, call, now: float) -> bool:
        pid = call.program_id
        p = self.programs.setdefault(pid, _Program(status=ACTIVE, admitted=True,
                                                   status_since=now, phase_since=now))
        self._set_context(pid, call.prompt_chain)
        self._reason(p, call, now)
        return True

    def finished(self, call, now: float) -> None:
        self.on_finish(call, now)

    def tick(self, now: float) -> list:
        return []

    def next_tick(self, now: float) -> float:
        return float("inf")


def median_tool_wait(spec, seed: int, programs: int = 64) -> float:
    """The median tool wait of a workload's first serving programs (the TTL ``Ttl`` pins for,
    standing for the one Continuum learns)."""
    from benchmarks.agentic import workload

    waits = [call.tool_wait_s for i in range(programs)
             for call in workload.serving_program(spec, seed, i % 16, i // 16).calls[1:]]
    return statistics.median(waits)


class Ttl(Plain):
    name = "ttl"

    def __init__(self, ttl_s: float):
        self.ttl_s = ttl_s
        self.pinned_until: dict[str, float] = {}

    def rank(self, block, now: float) -> tuple:
        pinned = any(self.pinned_until.get(pid, -1.0) > now for pid in block.owners)
        return (int(pinned), block.last_used)

    def finished(self, call, now: float) -> None:
        self.pinned_until[call.program_id] = now + self.ttl_s

    def ended(self, program_id: str, now: float) -> None:
        self.pinned_until.pop(program_id, None)


class Proxy(Thunder):
    name = "proxy"

    def __init__(self, tick_s: float = 5.0, estimate: float = 1.0):
        super().__init__(tick_s=tick_s, decay="off", offload=False)
        self.estimate = estimate

    def attach(self, engine) -> None:
        super().attach(engine)
        self.config = SchedulerConfig(capacity_tokens=self.config.capacity_tokens, decay=False)

    def rank(self, block, now: float) -> tuple:
        return (block.last_used,)

    host_rank = Plain.host_rank  # plain replicas behind the proxy

    def _footprint(self) -> Footprint:
        def alone(ids):
            total, out = 0, []
            for pid in ids:
                total += round(self.ledger.context_tokens(pid) * self.estimate)
                out.append(total)
            return out
        return alone

    def arrive(self, call, now: float) -> bool:  # no decision between ticks
        return self.on_arrive(call, now)

    def finished(self, call, now: float) -> None:  # paused at its tool boundary at once
        self.on_finish(call, now)
        if self.programs[call.program_id].marked:
            self._pause(call.program_id, now)

    def next_tick(self, now: float) -> float:
        return self._last_tick + self.tick_s
