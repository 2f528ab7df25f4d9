"""One engine replica, step by step, and the agent programs that call it.

Each step the engine admits waiting calls first come first served (a call whose prompt and
output do not fit even after eviction waits, and so does every call behind it, as in SGLang's
FCFS; nothing is evicted for a call that eviction could not make room for), up to ``prefill_tokens`` new tokens per step (at least one call). A step that prefills
emits the first token of the calls it admitted and nothing else (SGLang's default: a prefill
batch runs alone; ``mixed=True`` lets the running calls decode in it too); any other step
decodes, every running call emitting one token; a call that has emitted its output finishes, its whole sequence enters
the cache unlocked, and its program's next call arrives after its tool wait. A call reserves
its blocks when admitted (prompt and output, less its cached prefix), so running calls never
need more room: this model has no decode retraction. The step's length comes from
``costs.StepCost``. A policy decides holds and the eviction order (``sim/policies.py``).

Agents: ``slots`` serving slots each play programs of ``benchmarks.agentic.workload`` one
after another, as the benchmark runner's serving mode does.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from dataclasses import dataclass, field

from benchmarks.agentic import workload
from sim.cache import BlockCache, HostTier
from sim.costs import StepCost
from thunderagent_sglang.policy.demand import BlockChain, block_keys


@dataclass(eq=False)
class SimCall:
    program_id: str
    turn: int
    last: bool  # its program's last call
    prompt_tokens: int
    output_tokens: int
    prompt_chain: BlockChain  # block keys of the prompt (the last block may be partial)
    full_chain: BlockChain  # of prompt and output
    arrived_at: float
    slot: int = -1  # the serving slot that plays its program
    matched: int = 0  # cached blocks found at admission (device, then host)
    locked: int = 0  # of them, the device blocks it locks while it runs
    reserved: int = 0
    emitted: int = 0
    admitted_at: float | None = None

    def __post_init__(self) -> None:
        self.prompt_keys = self.prompt_chain.keys
        self.full_keys = self.full_chain.keys


@dataclass
class Stats:
    finished: list[float] = field(default_factory=list)  # finish times of calls
    calls: list[tuple[float, int, int]] = field(default_factory=list)  # finish, prompt, cached
    cached_tokens: int = 0
    computed_tokens: int = 0
    steps: int = 0
    busy_s: float = 0.0
    held_s: float = 0.0  # summed time calls waited before admission
    rejected: int = 0  # calls longer than the whole pool (their programs end there)
    host_loaded_tokens: int = 0  # prompt tokens loaded back from the host tier
    program_times: list[tuple[float, float]] = field(default_factory=list)  # end, seconds

    def calls_per_min(self, start: float, end: float) -> float:
        n = sum(1 for t in self.finished if start <= t < end)
        return n * 60.0 / (end - start)

    def program_seconds(self, start: float, end: float, q: float) -> float | None:
        """The ``q`` quantile of the run times of programs that ended in [start, end)."""
        times = sorted(s for t, s in self.program_times if start <= t < end)
        return times[min(len(times) - 1, int(q * len(times)))] if times else None

    def hit_rate(self, start: float = 0.0, end: float = float("inf")) -> float:
        """Cached over prompt tokens of the calls finished in [start, end)."""
        window = [(p, c) for t, p, c in self.calls if start <= t < end]
        total = sum(p for p, _ in window)
        return sum(c for _, c in window) / total if total else 0.0


def make_call(program: workload.Program, prompts: list, turn: int, block: int, now: float,
              slot: int) -> SimCall:
    """The program's ``turn``-th call, arriving now."""
    prompt = prompts[turn]
    full = prompt + workload.stand_in_output(program, turn)
    return SimCall(program.program_id, turn, turn == program.turns - 1, len(prompt),
                   program.calls[turn].output_tokens, block_keys(prompt, block),
                   block_keys(full, block), now, slot)


class Engine:
    def __init__(self, policy, *, capacity_tokens: int, block: int = 256,
                 prefill_tokens: int = 4096, cost: StepCost = StepCost(),
                 spec: workload.WorkloadSpec = workload.WorkloadSpec(), seed: int = 0,
                 slots: int = 8, source=None, mixed: bool = False, host_tokens: int = 0,
                 host_load_token_s: float = 0.0):
        """``host_tokens``: a HiCache host tier of that size (0: none); a prefix found there
        is loaded back at ``host_load_token_s`` a token instead of recomputed."""
        self.policy, self.block, self.cost, self.mixed = policy, block, cost, mixed
        self.host = HostTier(host_tokens // block, lambda b: policy.host_rank(b, self.now)) \
            if host_tokens >= block else None
        self.host_load_token_s = host_load_token_s
        self._loading = 0  # tokens loaded from the host for this step's calls
        self.prefill_tokens, self.spec, self.seed, self.slots = prefill_tokens, spec, seed, slots
        # (slot, index) -> the slot's index-th program, or None when the slot is done
        self.source = source or (lambda slot, index: workload.serving_program(
            spec, seed, slot, index))
        self.cache = BlockCache(max(1, capacity_tokens // block),
                                lambda b: policy.rank(b, self.now),
                                spill=self.host.write if self.host is not None else None)
        self.now = 0.0
        self.waiting: deque[SimCall] = deque()
        self.running: list[SimCall] = []
        self.reserved = 0
        self.stats = Stats()
        self._events: list = []  # (time, seq, slot, program, turn)
        self._started: dict[str, float] = {}  # program id -> its first call's arrival
        self._seq = itertools.count()
        self._programs: dict[int, tuple[workload.Program, list[tuple[int, ...]], int]] = {}
        policy.attach(self)

    # ---- agents ------------------------------------------------------------------------------

    def start(self) -> None:
        for slot in range(self.slots):
            self._next_program(slot, 0)

    def _next_program(self, slot: int, index: int) -> None:
        program = self.source(slot, index)
        if program is None:
            return
        self._programs[slot] = (program, workload.prompts(program), index)
        self._schedule(self.now, slot, 0)

    def _schedule(self, at: float, slot: int, turn: int) -> None:
        heapq.heappush(self._events, (at, next(self._seq), slot, turn))

    def _arrive(self, slot: int, turn: int) -> None:
        program, prompts, _ = self._programs[slot]
        self.submit(make_call(program, prompts, turn, self.block, self.now, slot))

    def submit(self, call: SimCall) -> None:
        """A call arrives (from its agent, or a fleet's router)."""
        if call.turn == 0:
            self._started.setdefault(call.program_id, self.now)
        if len(call.full_keys) > self.cache.capacity:  # SGLang refuses what the pool can't hold
            self.stats.rejected += 1
            self.policy.ended(call.program_id, self.now)
            self.on_rejected(call)
            return
        if self.policy.arrive(call, self.now):
            self.waiting.append(call)

    def on_rejected(self, call: SimCall) -> None:
        """Its program ends there: the slot plays its next one."""
        self._next_program(call.slot, self._programs[call.slot][2] + 1)

    def release(self, calls) -> None:
        """Calls the policy held, now to be admitted (in the order given)."""
        self.waiting.extend(calls)

    # ---- the engine --------------------------------------------------------------------------

    def run(self, until: float) -> Stats:
        self.start()
        while self.now < until:
            while self._events and self._events[0][0] <= self.now:
                _, _, slot, turn = heapq.heappop(self._events)
                self._arrive(slot, turn)
            self.release(self.policy.tick(self.now))
            if not self.waiting and not self.running:
                wake = min([self._events[0][0]] if self._events else [until],
                           default=until)
                self.now = max(self.now, min(wake, self.policy.next_tick(self.now), until))
                continue
            self._step()
        return self.stats

    def _step(self) -> None:
        prefill = self._admit()
        if prefill and not self.mixed:  # a prefill step: only its new calls emit (SGLang's
            stepping = [c for c in self.running if not c.emitted]  # default: not mixed)
        else:
            stepping = self.running
        contexts = [c.prompt_tokens + c.emitted for c in stepping if c.emitted]
        dt = self.cost.step_s(prefill, contexts) + self.host_load_token_s * self._loading
        self._loading = 0
        if not prefill and contexts:
            self.policy.on_decode_step(len(contexts), dt)
        self.now += dt
        self.stats.steps += 1
        self.stats.busy_s += dt
        done = []
        for call in stepping:
            call.emitted += 1
            if call.emitted >= call.output_tokens:
                done.append(call)
        for call in done:
            self._finish(call)

    def _admit(self) -> list[tuple[int, int]]:
        prefill, budget = [], self.prefill_tokens
        while self.waiting:
            call = self.waiting[0]
            matched = self.cache.match(call.prompt_keys)
            host = self._in_host(call, matched)
            new_tokens = call.prompt_tokens - (matched + host) * self.block
            if prefill and new_tokens > budget:
                break
            need = len(call.full_keys) - matched  # host blocks come back into the device
            short = need - (self.cache.free - self.reserved)
            if short > 0:
                # as SGLang's admission: evict only when what eviction can free is enough
                if short > self.cache.evictable() - matched:
                    break
                self.cache.evict(short)
                matched = self.cache.match(call.prompt_keys)  # eviction may cut its prefix
                host = self._in_host(call, matched)
                need = len(call.full_keys) - matched
                if need > self.cache.free - self.reserved:
                    break
            self.waiting.popleft()
            self.cache.lock(call.prompt_keys[:matched], 1)
            self.cache.touch(call.prompt_keys[:matched], self.now)
            call.locked = matched
            call.matched, call.reserved, call.admitted_at = matched + host, need, self.now
            self.reserved += need
            cached = min((matched + host) * self.block, call.prompt_tokens)
            if host:
                self.host.touch(call.prompt_keys[matched:matched + host], self.now)
                loaded = cached - min(matched * self.block, call.prompt_tokens)
                self._loading += loaded
                self.stats.host_loaded_tokens += loaded
            self.stats.cached_tokens += cached
            self.stats.computed_tokens += call.prompt_tokens - cached
            self.stats.held_s += self.now - call.arrived_at
            self.running.append(call)
            prefill.append((call.prompt_tokens - cached, call.prompt_tokens))
            budget -= call.prompt_tokens - cached
        return prefill

    def _in_host(self, call: SimCall, matched: int) -> int:
        return self.host.match_after(call.prompt_keys, matched) if self.host is not None else 0

    def _finish(self, call: SimCall) -> None:
        self.running.remove(call)
        self.cache.lock(call.prompt_keys[:call.locked], -1)
        self.reserved -= call.reserved
        self.cache.insert(call.full_keys, self.now, call.program_id)
        self.stats.finished.append(self.now)
        self.stats.calls.append((self.now, call.prompt_tokens,
                                 min(call.matched * self.block, call.prompt_tokens)))
        self.policy.finished(call, self.now)
        if call.last:
            self.policy.ended(call.program_id, self.now)
            started = self._started.pop(call.program_id, None)
            if started is not None:
                self.stats.program_times.append((self.now, self.now - started))
        self.on_finished(call)

    def on_finished(self, call: SimCall) -> None:
        """The agent's side: its next call after the tool wait, or the slot's next program."""
        program, _, index = self._programs[call.slot]
        if call.last:
            self._next_program(call.slot, index + 1)
        else:
            self._schedule(self.now + program.calls[call.turn + 1].tool_wait_s, call.slot,
                           call.turn + 1)
