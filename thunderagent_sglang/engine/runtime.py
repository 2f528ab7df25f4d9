"""``ProgramRuntime``: the one object of ours in SGLang's scheduler process.

It owns every piece of program state: the program table, the demand ledger, the residency
counters and retired nodes of the radix tree, the linker, the calls in the engine (with their
decode headroom), and, through ``ProgramScheduler``, the held calls, marks, operator pauses and
priorities. SGLang reaches it only through its bound methods: the hooks installed by
``install`` and the cache factories of ``program_cache``. Pause, resume and end of a program are
one method each, and each changes every view (table, ledger, residency, scheduler, offload,
sidecar) at once; nothing else changes them.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

from thunderagent_sglang import config
from thunderagent_sglang.engine.decision_trace import NoTrace
from thunderagent_sglang.engine.decode_meter import DecodeMeter
from thunderagent_sglang.engine.logs import get_logger
from thunderagent_sglang.engine.offload import Offloader
from thunderagent_sglang.engine.program_ipc import (
    FINAL_KEY, HELD_KEY, ID_KEY, PARENT_KEY, PRIORITY_KEY)
from thunderagent_sglang.engine.program_pausing import ProgramScheduler
from thunderagent_sglang.engine.runtime_hooks import SchedulerHooks
from thunderagent_sglang.engine.tp_consensus import TpConsensus
from thunderagent_sglang.policy.demand import BlockChain, DemandLedger, block_keys
from thunderagent_sglang.policy.eviction import ProgramState, program_key
from thunderagent_sglang.policy.residency import Residency
from thunderagent_sglang.program.event_ring import EventRing
from thunderagent_sglang.program import events, misses
from thunderagent_sglang.program.linking import PrefixLinker
from thunderagent_sglang.program.record import Phase, Program, ProgramBusy, Status, UnknownProgram
from thunderagent_sglang.program.table import ProgramTable

EXPIRY_CHECK_S = 1.0
# Demand is counted in blocks of whole pages, or of 16 tokens with page size 1
# (then two contexts that part inside a block count its common tokens twice).
MIN_DEMAND_BLOCK = 16


class Arrival(NamedTuple):
    program_id: str
    parent_id: str | None = None
    final: bool = False
    priority: int | None = None
    held_s: float = 0.0  # a router held it this long before (its program moved replicas)


@dataclasses.dataclass
class Call:
    """A call in the engine: its program (None: untagged), the tokens it may still add, and
    the demand chain of its prompt (extended, not rehashed, when it finishes)."""

    program_id: str | None
    headroom: int
    chain: BlockChain | None = None


def take_identity(sampling_params) -> Arrival | None:
    """Remove our keys from custom_params; the call's program identity or None."""
    params = getattr(sampling_params, "custom_params", None)
    if not isinstance(params, dict) or ID_KEY not in params:
        return None
    program_id = params.pop(ID_KEY)
    parent_id = params.pop(PARENT_KEY, None)
    final = bool(params.pop(FINAL_KEY, False))
    priority = params.pop(PRIORITY_KEY, None)
    held_s = float(params.pop(HELD_KEY, 0.0) or 0.0)
    if not params:
        sampling_params.custom_params = None
    return Arrival(program_id, parent_id, final, priority, held_s)


class ProgramRuntime(SchedulerHooks):
    def __init__(self, cfg: config.ThunderAgentConfig, *,
                 events_out=None, clock: Callable[[], float] | None = None):
        self.cfg = cfg
        self.consensus = TpConsensus(self)  # tensor parallelism: rank 0's clock on every rank
        clock = clock or self.consensus.clock
        self.clock = clock
        self.table = ProgramTable(idle_expiry_s=cfg.idle_expiry_s,
                                  max_terminated=cfg.max_terminated, clock=clock)
        self.ledger = DemandLedger()
        self.residency = Residency()
        self.linker = PrefixLinker() if cfg.link_untagged else None
        self.calls: dict[str, Call] = {}  # rid -> call in the engine
        self._headroom: dict[str | None, int] = {}  # program id (None: untagged) -> tokens
        self._finish_chain: dict[str, BlockChain] = {}  # program id -> its last finish's chain
        self.events_out = events_out  # the EventSender to the sidecar, or None
        self.events = EventRing(cfg.event_ring)  # the live view's history
        self.trace = NoTrace()  # --thunderagent-decision-trace, opened once the rank is known
        self.notify = events_out.submit if events_out is not None else (lambda pid, event: None)
        self.page_size = 1
        self.tree = None  # our tree core, once SGLang builds the cache
        self.evict_first: str | None = None  # a program whose own nodes rank first (offload)
        self.sglang = None  # SGLang's Scheduler, once its request dispatcher is built
        self.offload = Offloader(self, cfg)
        self.decode_meter = DecodeMeter()  # --thunderagent-decay auto
        self.scheduler = ProgramScheduler(self, cfg)
        self._last_expiry = 0.0

    # ---- the views of one program: changed together ------------------------------------

    def counted(self, program_id: str) -> bool:
        """Demand and residency count a program while it is live and active."""
        program = self.table.live_program(program_id)
        return program is not None and program.status is Status.ACTIVE

    def _count(self, program_id: str) -> None:
        active = self.counted(program_id)
        if program_id in self.ledger:
            self.ledger.set_active(program_id, active)
        if program_id in self.residency:
            self.residency.set_active(program_id, active)

    def pause(self, program: Program, reason: str, *, operator: bool = False) -> None:
        """Pause a live program: every view at once, then keep/offload/drop its KV."""
        pid = program.program_id
        was_paused = program.status is Status.PAUSED
        self.table.pause(pid, operator=operator)
        if operator or not was_paused:  # an operator's pause of a paused program counts too
            self.trace.write("pause", program.status_since, p=pid, reason=reason,
                             operator=operator)
        if was_paused:
            return
        self.scheduler.marked.discard(pid)
        self._count(pid)
        self.offload.on_pause(program)
        self.events.add("pause", pid, reason=reason, operator=operator or None,
                        kv=program.kv_decision)
        self.notify(pid, events.PAUSED)
        get_logger().debug("ThunderAgent scheduler: paused %s (%s)", pid, reason)

    def resume(self, program: Program, reason: str, *, operator: bool = False) -> None:
        """Resume a paused program: every view at once, its KV loaded back, its calls let go."""
        pid = program.program_id
        was_paused = program.status is Status.PAUSED
        decision = program.kv_decision
        if operator or was_paused:
            self.table.resume(pid)  # also ends an operator's pause
        if not was_paused:
            return
        self._count(pid)
        self.offload.on_resume(pid, decision)
        self.trace.write("resume", program.status_since, p=pid, reason=reason,
                         operator=operator)
        self.events.add("resume", pid, reason=reason, operator=operator or None)
        self.notify(pid, events.RESUMED)
        get_logger().debug("ThunderAgent scheduler: resumed %s (%s)", pid, reason)
        self.scheduler.release_held(pid)

    def release(self, program_id: str, cause: str = "explicit") -> Program:
        """End a program (after its calls in the engine finish); UnknownProgram. Its room is
        decided on at once (paused programs may resume), not at the next tick: an idle CPU
        scheduler sleeps up to a second between ticks."""
        program = self.table.release(program_id, cause)
        self._ended(program)
        self.scheduler.check_if_needed("release")
        return program

    def migrate(self, program_id: str) -> tuple[Program | None, int]:
        """A router moves the program to another replica: nothing of it may be running here.
        Its held calls are answered 421 (the router sends them on), then it ends (cause
        "migrated"). Returns its record's program (None if never admitted) and how many calls
        were handed over. UnknownProgram; ProgramBusy while a call of it runs here."""
        program = self.table.live_program(program_id)
        if program is None and program_id not in self.scheduler.held:
            raise UnknownProgram(program_id)
        if program is not None and program.in_flight:
            raise ProgramBusy(program_id, len(program.in_flight))
        handed = self.scheduler.hand_over(program_id, self.answer_migrated)
        if program is not None:
            self.release(program_id, "migrated")
        get_logger().info("ThunderAgent: program %s migrated away (%d held call(s) handed "
                          "back to the router)", program_id, handed)
        return program, handed

    def _ended(self, program: Program | None) -> None:
        """After any change of a program by the table: drop what an ended program held, or
        keep what the linker needs of a live one."""
        if program is None:
            return
        pid = program.program_id
        if program.live:
            if self.linker is not None and program.last_sequence is not None:
                self.linker.remember(pid, program.last_full_sequence)
            return
        if pid in self.ledger:
            self.ledger.remove(pid)
        self._finish_chain.pop(pid, None)
        self.offload.forget(pid)
        self._retire(pid)
        self.scheduler.forget(pid)
        self.trace.write("end", self.clock(), p=pid, cause=program.release_cause or "ended")
        self.events.add("end", pid, cause=program.release_cause or "ended")
        self.notify(pid, events.TERMINATED)
        self.scheduler.release_held(pid)  # its next calls start a new incarnation
        if self.linker is not None:
            self.linker.forget(pid)
        if program.release_cause is not None:
            get_logger().info("ThunderAgent: program %s ended (%s)", pid, program.release_cause)

    def forget_unadmitted(self, program_id: str) -> None:
        """A program that was never admitted has no held call left: drop its demand and
        priority (they would otherwise stay forever)."""
        if self.table.live_program(program_id) is None and program_id not in self.scheduler.held:
            if program_id in self.ledger:
                self.ledger.remove(program_id)
                self.trace.write("end", self.clock(), p=program_id, cause="never admitted")
            self.scheduler.priority.pop(program_id, None)

    def _retire(self, program_id: str) -> None:
        """A program ended: its nodes become the first eviction candidates, its tags go."""
        if self.tree is not None:
            self.tree.retire(program_id)
        self.residency.drop_program(program_id)

    def expire_idle(self) -> None:
        self._last_expiry = self.clock()
        for program in self.table.expire_idle():
            self._ended(program)

    # ---- calls ---------------------------------------------------------------------------

    def identify(self, recv_req) -> Arrival | None:
        arrival = take_identity(recv_req.sampling_params)
        if arrival is not None or self.linker is None or not recv_req.input_ids:
            return arrival
        program_id = self.linker.find(recv_req.input_ids)
        return None if program_id is None else Arrival(program_id)

    def track_arrival(self, arrival: Arrival, recv_req, max_new: int,
                      chain: BlockChain | None = None) -> None:
        """A tagged call goes to SGLang: the table, its prompt as demand, its headroom.
        ``chain``: its prompt's, hashed when it was held; still the program's context in the
        ledger unless a later call of the program replaced it (then hashed again)."""
        try:
            self.table.on_arrival(arrival.program_id, recv_req.rid,
                                  parent_id=arrival.parent_id, final=arrival.final)
        except ValueError as exc:  # a duplicate rid: SGLang answers it; we do not track it
            get_logger().warning("ThunderAgent: request %s not tracked: %s", recv_req.rid, exc)
            return
        self.events.add("call", arrival.program_id)
        self.offload.call_came(arrival.program_id)
        if chain is None or self.ledger.chain_of(arrival.program_id) is not chain:
            chain = self.set_prompt(arrival.program_id, recv_req)
        else:
            self._count(arrival.program_id)
        self.track_call(recv_req.rid, arrival.program_id, max_new, chain)
        program = self.table.live_program(arrival.program_id) if self.trace.on else None
        if program is not None:
            self.trace.write("call", program.phase_since, p=arrival.program_id, rid=recv_req.rid,
                             tokens=recv_req.input_ids or (),
                             headroom=self.scheduler.headroom_of(max_new))

    def track_call(self, rid: str, program_id: str | None, headroom: int,
                   chain: BlockChain | None = None) -> None:
        headroom = self.scheduler.headroom_of(headroom)
        old = self.calls.pop(rid, None)
        if old is not None:
            self._add_headroom(old.program_id, -old.headroom)
        self.calls[rid] = Call(program_id, headroom, chain)
        self._add_headroom(program_id, headroom)

    def call_done(self, rid: str) -> Call | None:
        call = self.calls.pop(rid, None)
        if call is not None:
            self._add_headroom(call.program_id, -call.headroom)
        return call

    def _add_headroom(self, program_id: str | None, tokens: int) -> None:
        total = self._headroom.get(program_id, 0) + tokens
        if total:
            self._headroom[program_id] = total
        else:
            self._headroom.pop(program_id, None)

    def running_headroom(self, program_id: str | None) -> int:
        """Tokens the calls of a program (None: untagged) in the engine may still add."""
        return self._headroom.get(program_id, 0)

    def all_running_headroom(self) -> int:
        """Tokens every call in the engine may still add. O(programs with a call in it)."""
        return sum(self._headroom.values())

    def set_prompt(self, program_id: str, recv_req) -> BlockChain | None:
        """A call's prompt is its program's context from now on (demand, shared prefixes
        once). Only new tokens are hashed when it extends the program's last sequence."""
        prompt = recv_req.input_ids
        if not prompt:
            return None
        program = self.table.live_program(program_id)
        previous = program.last_sequence if program is not None else None
        prev_chain = self.ledger.chain_of(program_id)
        extends = (previous is not None and prev_chain is not None
                   and prev_chain is self._finish_chain.get(program_id)
                   and len(prompt) >= len(previous)
                   and misses.common_prefix_len(previous, misses.as_tokens(prompt)) == len(previous))
        chain = block_keys(prompt, self.block_size, prev=prev_chain if extends else None)
        self.ledger.set_context(program_id, chain)
        self._count(program_id)
        return chain

    @property
    def block_size(self) -> int:
        return self.page_size if self.page_size > 1 else MIN_DEMAND_BLOCK

    def finish(self, req) -> Program | None:
        """A call left the engine (answered or aborted); its program, if tagged."""
        call = self.call_done(req.rid)
        program = self.table.program_for(req.rid)
        if program is None:
            return None
        tokens = misses.kv_tokens(req.origin_input_ids, req.output_ids)
        sequence = misses.as_tokens(tokens)
        prompt = sequence[:len(req.origin_input_ids)]
        previous = program.last_sequence
        common = None if previous is None else misses.common_prefix_len(previous, prompt)
        cached = req.cached_tokens or 0
        missed = misses.classify(previous, prompt, cached, self.page_size, common=common)
        self._set_finished_context(program.program_id, tokens, call)
        self.residency.drop_head(program.program_id, req.rid)  # its checkpoint moved to "last"
        full = (list(req.origin_input_ids) + list(req.output_ids)
                if self.linker is not None else None)
        program = self.table.on_finish(
            req.rid, prompt_tokens=len(prompt), cached_tokens=cached,
            output_tokens=len(req.output_ids), missed=missed, sequence=sequence,
            full_sequence=full)
        if program is not None:
            self.trace.write("finish", program.phase_since if program.live else self.clock(),
                             p=program.program_id, rid=req.rid, tokens=tokens)
            self.events.add("finish", program.program_id, prompt=len(prompt), cached=cached,
                            output=len(req.output_ids), missed_evicted=missed.evicted or None,
                            missed_changed=missed.changed or None)
        self._ended(program)
        return program

    def _set_finished_context(self, program_id: str, tokens: list[int], call: Call | None):
        """The program's latest context in the demand ledger. When the ledger still holds this
        call's prompt, the context extends it: only new tokens are hashed."""
        previous = self.ledger.chain_of(program_id)
        extends = previous is not None and call is not None and previous is call.chain
        chain = block_keys(tokens, self.block_size, prev=previous if extends else None)
        self.ledger.set_context(program_id, chain)
        self._count(program_id)
        self._finish_chain[program_id] = chain

    def tool_boundaries(self, programs: list[Program]) -> None:
        """After finishes and the scheduler's check: each program that now acts and is not
        paused gets the boundary decision for its KV (``--thunderagent-tool-offload``)."""
        for program in {p.program_id: p for p in programs}.values():
            if _acting_active(program):
                self.offload.at_boundary(program)

    def tool_event(self, program_id: str, event: str, expected_s: float | None,
                   tool: str | None) -> Program:
        """A tool hint: the table's, then a start naming the tool decides the KV again with
        the new prediction, an end loads offloaded KV back at once."""
        program = self.table.tool_event(program_id, event, expected_s, tool)
        if _acting_active(program):
            if event == "start":
                self.offload.at_boundary(program)
            else:
                self.offload.tool_ended(program_id)
        return program

    # ---- eviction ------------------------------------------------------------------------

    def eviction_key(self, program_id: str):
        """The eviction rank of a live program's KV (policy.eviction), or None. Its size is
        the ledger's context, the one the scheduler reads (the current prompt while a call
        runs, the finished call's tokens with KV after)."""
        program = self.table.live_program(program_id)
        if program is None:
            return None
        ledger = self.ledger
        state = ProgramState(
            paused=program.status is Status.PAUSED,
            reasoning=program.phase is Phase.REASONING,
            context_tokens=ledger.context_tokens(program_id) if program_id in ledger
            else program.context_tokens,
            tool_seconds=self.clock() - program.phase_since,
            predicted_s=program.tool_predicted_s if self.cfg.predicted_eviction else None,
        )
        return program_key(state, self.cfg.decay_half_life_s)

    # ---- the periodic check ----------------------------------------------------------------

    def tick(self) -> None:
        now = self.clock()
        if now - self._last_expiry >= EXPIRY_CHECK_S:
            self.expire_idle()
        self.offload.run_due(now)
        self.scheduler.observe_loop(now)
        self.scheduler.maybe_tick()


def _acting_active(program: Program) -> bool:
    return (program.live and program.status is Status.ACTIVE and program.phase is Phase.ACTING
            and not program.in_flight)
