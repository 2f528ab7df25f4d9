"""The program table: every tagged program's phase, status and accounting (pure Python).

One table per SGLang scheduler process. The scheduler hooks call ``on_arrival`` / ``on_finish``
for tagged requests (untagged ones never reach it); the HTTP endpoints reach ``release``,
``tool_event``, ``pause``, ``resume``, ``get``, ``programs`` and ``record`` through IPC.
Nothing here reads a clock except the injected one, so tests drive time exactly.

Memory is bounded: live programs are kept until they terminate, at most ``max_terminated``
terminated records are kept (oldest terminated evicted first), and a request id is forgotten
when its request finishes.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from thunderagent_sglang.program.environments import check_environments
from thunderagent_sglang.program.expiry import ExpiryIndex
from thunderagent_sglang.program.tool_time import GAP, ToolTimes, check_tool_name, short_repr
from thunderagent_sglang.program.record import (
    RECORD_KEYS,
    RELEASE_CAUSES,
    Phase,
    Program,
    Status,
    UnknownProgram,
    program_record,
)

__all__ = ["Phase", "Program", "ProgramTable", "RECORD_KEYS", "Status", "UnknownProgram",
           "check_tool_name"]

TOOL_EVENTS = ("start", "end")


def check_tool_event(event: Any) -> str:
    """A tool hint's event, "start" or "end"; ValueError otherwise (the value shown short)."""
    if event not in TOOL_EVENTS:
        raise ValueError(f"tool event must be 'start' or 'end', got {short_repr(event)}")
    return event


def check_expected_s(value: Any) -> float | None:
    """A tool hint's ``expected_s``: None, or a finite number of seconds, 0 or more (the one
    rule, for the route and the table); ValueError otherwise."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            math.isfinite(value) and value >= 0):
        raise ValueError(f"expected_s must be a finite number of seconds, 0 or more, "
                         f"got {value!r}")
    return float(value)


class ProgramTable:
    """Programs by id, their request ids, and kept terminated records.

    Invariants (hold between calls):
      * each id has at most one live (active or paused) program, its latest incarnation;
      * a live program is REASONING iff it has a request in flight; the rid index holds exactly
        the rids in flight of live programs;
      * terminated programs have nothing in flight and are kept at most ``max_terminated``;
      * ``_idle`` (an ``ExpiryIndex``) holds exactly the live idle programs (``Program.idle``).
    """

    def __init__(self, *, idle_expiry_s: float, max_terminated: int = 10000,
                 clock: Callable[[], float] = time.monotonic):
        if not (isinstance(idle_expiry_s, (int, float)) and idle_expiry_s > 0):  # NaN fails too
            raise ValueError("idle_expiry_s must be a positive number of seconds (inf disables), "
                             f"got {idle_expiry_s!r}")
        if not (isinstance(max_terminated, int) and max_terminated >= 0):
            raise ValueError(f"max_terminated must be a non-negative int, got {max_terminated!r}")
        self.idle_expiry_s = float(idle_expiry_s)
        self.max_terminated = max_terminated
        self.clock = clock
        self._live: dict[str, Program] = {}  # creation order
        self._terminated: OrderedDict[tuple[str, int], Program] = OrderedDict()  # termination order
        self._latest_terminated: dict[str, tuple[str, int]] = {}
        self._by_rid: dict[str, Program] = {}
        self._idle = ExpiryIndex(self.idle_expiry_s)
        self.tool_times = ToolTimes()  # acting-phase lengths, per tool and per program
        self._status_counts = {Status.ACTIVE: 0, Status.PAUSED: 0}
        self._phase_counts = {Phase.REASONING: 0, Phase.ACTING: 0}
        self.counters: dict = {
            "releases": {cause: 0 for cause in RELEASE_CAUSES},
            "programs_created": 0,
            "requests_arrived": 0,
            "requests_finished": 0,
            "pauses": 0,
            "resumes": 0,
            "tool_events": 0,
            "environment_reports": 0,
            "acting_observed": 0,
            "records_evicted": 0,
            "prefill_tokens_computed": 0,
            "prefill_tokens_cached": 0,
            "decode_tokens": 0,
            "missed_evicted_tokens": 0,
            "missed_evicted_paused_tokens": 0,  # of those, in a call after its program's pause
            "missed_changed_tokens": 0,
        }

    # ---- scheduler hooks -------------------------------------------------------------------

    def on_arrival(self, program_id: str, rid: str, *, parent_id: str | None = None,
                   final: bool = False) -> Program:
        """A tagged request ``rid`` of ``program_id`` entered the engine.

        Creates the program (incarnation+1 if the latest one terminated). Afterwards the program
        is REASONING with ``rid`` in flight; its status is unchanged (a paused program stays
        paused) and no tool running. ``final`` requests release (cause "final") once its in-flight calls finish.
        ValueError if ``rid`` is already in flight.
        """
        if rid in self._by_rid:
            owner = self._by_rid[rid].program_id
            raise ValueError(f"request id {rid!r} is already in flight (program {owner!r})")
        now = self.clock()
        p = self._live.get(program_id)
        if p is None:
            p = self._create(program_id, parent_id, now)
        elif p.parent_id is None and parent_id is not None:
            p.parent_id = parent_id
        self._acting_ended(p, now)
        p.in_flight.add(rid)
        p.waiting = False
        self._by_rid[rid] = p
        self.counters["requests_arrived"] += 1
        # The next LLM call means its tool is done, even if no "end" hint came:
        # a lost hint must not keep the program from ever expiring.
        p.tool_running, p.tool_since = False, None
        self._set_phase(p, Phase.REASONING, now)
        if final and not p.release_requested:
            p.release_requested, p.requested_cause = True, "final"
        self._touch_idle(p, now)
        return p

    def live_program(self, program_id: str) -> Program | None:
        """The live (not terminated) program with this id, or None: O(1)."""
        return self._live.get(program_id)

    def program_for(self, rid: str) -> Program | None:
        """The program of in-flight request ``rid``, or None (untagged)."""
        return self._by_rid.get(rid)

    def on_finish(self, rid: str, *, prompt_tokens: int, cached_tokens: int,
                  output_tokens: int, missed: tuple[int, int] = (0, 0),
                  sequence: Any = None, full_sequence: Any = None) -> Program | None:
        """Request ``rid`` left the engine; None if the table does not know it (untagged).

        Accounts the call (steps, prefill computed/cached, decode, context = prompt + output).
        ``sequence`` (the call's tokens with KV) and ``full_sequence`` (prompt and output, for
        linking), when given, become the program's latest ones. When it was the last in flight
        the program turns ACTING (tool time starts now) and, if a release was requested,
        terminates with the requested cause.
        """
        p = self._by_rid.pop(rid, None)
        if p is None:
            return None
        now = self.clock()
        if sequence is not None:
            p.last_sequence = sequence
        if full_sequence is not None:
            p.last_full_sequence = full_sequence
        p.in_flight.discard(rid)
        self.counters["requests_finished"] += 1
        p.steps += 1
        p.prefill_tokens_cached += cached_tokens
        p.prefill_tokens_computed += prompt_tokens - cached_tokens
        p.decode_tokens += output_tokens
        p.context_tokens = prompt_tokens + output_tokens
        self.counters["prefill_tokens_cached"] += cached_tokens
        self.counters["prefill_tokens_computed"] += prompt_tokens - cached_tokens
        self.counters["decode_tokens"] += output_tokens
        p.missed_evicted_tokens += missed[0]
        p.missed_changed_tokens += missed[1]
        self.counters["missed_evicted_tokens"] += missed[0]
        if p.paused_since_call:
            self.counters["missed_evicted_paused_tokens"] += missed[0]
            p.paused_since_call = False
        self.counters["missed_changed_tokens"] += missed[1]
        if not p.in_flight:
            self._set_phase(p, Phase.ACTING, now)
            if p.release_requested:
                self._terminate(p, p.requested_cause or "explicit", now)
                return p
            p.acting_open, p.tool, p.tool_key = True, None, None
            self._predict(p)
        self._touch_idle(p, now)
        return p

    # ---- control (HTTP endpoints through IPC) ----------------------------------------------

    def release(self, program_id: str, cause: str = "explicit") -> Program:
        """End a live program: at once if nothing is in flight (``cause``: "explicit", or
        "migrated" when a router moves it), otherwise mark it and terminate when its last
        in-flight request finishes (an earlier "final" marker keeps its cause). UnknownProgram
        for an unknown or terminated id."""
        if cause not in RELEASE_CAUSES:
            raise ValueError(f"unknown release cause {cause!r}")
        p = self._require_live(program_id)
        now = self.clock()
        if not p.release_requested:
            p.release_requested, p.requested_cause = True, cause
        if not p.in_flight:
            self._terminate(p, p.requested_cause or cause, now)
        return p

    def tool_event(self, program_id: str, event: str, expected_s: float | None = None,
                   tool: str | None = None) -> Program:
        """A tool phase hint: "start" (tool_running, expected_s kept: the program expires no
        sooner than twice ``expected_s`` after the start; ``tool``, if named, is what this
        acting phase is observed and predicted under) or "end" (tool stopped). Either restarts
        idle time. ValueError for another event or a bad name; UnknownProgram for a non-live
        id."""
        check_tool_event(event)
        expected_s = check_expected_s(expected_s)
        tool = check_tool_name(tool)
        p = self._require_live(program_id)
        now = self.clock()
        self.counters["tool_events"] += 1
        if event == "start":
            if not p.tool_running:
                p.tool_since = now
            p.tool_running, p.tool_expected_s = True, expected_s
            if tool is not None and p.acting_open and p.tool is None:  # the phase's first name
                p.tool, p.tool_key = tool, self.tool_times.key(tool)
                self._predict(p)
        else:
            p.tool_running, p.tool_expected_s, p.tool_since = False, None, None
        self._touch_idle(p, now)
        return p

    def set_environments(self, program_id: str, environments: list) -> Program:
        """The sidecar's report of the program's tool environments (replaces the last one;
        checked by ``program.environments``). Not the program's own activity: idle time goes on.
        ValueError for a bad report; UnknownProgram for a non-live id."""
        checked = check_environments({"environments": environments})
        p = self._require_live(program_id)
        p.environments = checked
        self.counters["environment_reports"] += 1
        return p

    def set_kv_decision(self, program_id: str, decision: str | None) -> Program:
        """What the cache did with a paused program's KV (keep|offload|drop)."""
        p = self._require_live(program_id)
        p.kv_decision = decision
        return p

    def set_tool_kv(self, program_id: str, decision: str) -> Program:
        """What the cache did with an acting program's KV at its tool boundary (keep|offload|
        drop); cleared when its next call comes."""
        p = self._require_live(program_id)
        p.tool_kv = decision
        return p

    def pause(self, program_id: str, *, operator: bool = False) -> Program:
        """Mark a live program paused (state only; no-op if already paused). Paused time is
        neither reasoning nor acting time; it counts toward idle expiry unless ``operator``
        (an operator's pause, also of a program already paused, lasts until a resume)."""
        p = self._change_status(program_id, Status.ACTIVE, Status.PAUSED, "pauses")
        p.paused_since_call = True
        if operator and not p.operator_paused:
            p.operator_paused = True
            self._idle.update(p)
        return p

    def resume(self, program_id: str) -> Program:
        """Mark a paused program active (state only; no-op if already active). Ends an
        operator's pause; idle time then restarts. UnknownProgram for a non-live id."""
        p = self._change_status(program_id, Status.PAUSED, Status.ACTIVE, "resumes")
        if p.operator_paused:
            p.operator_paused = False
            self._touch_idle(p, self.clock())
        return p

    def _acting_ended(self, p: Program, now: float) -> None:
        """The program's next call came (arrived or held): its acting phase is observed."""
        if p.acting_open:
            self.tool_times.observe(p.tool_key or GAP, p.program_id, now - p.phase_since)
            self.counters["acting_observed"] += 1
        p.acting_open = False
        p.tool_predicted_s = p.tool_predicted_p90_s = None

    def _predict(self, p: Program) -> None:
        got = self.tool_times.predict(p.tool_key or GAP, p.program_id)
        p.tool_predicted_s = None if got is None else got.median_s
        p.tool_predicted_p90_s = None if got is None else got.p90_s

    def set_waiting(self, program_id: str, waiting: bool) -> Program | None:
        """A call of a live program is held (``waiting``: its idle time stops) or the last one
        left the queue without being admitted (idle time restarts). None for a non-live id."""
        p = self._live.get(program_id)
        if p is not None and p.waiting != waiting:
            p.waiting = waiting
            now = self.clock()
            if waiting:
                self._acting_ended(p, now)  # its next call came, though held
            self._touch_idle(p, now)
        return p

    def _change_status(self, program_id: str, old: Status, new: Status, counter: str) -> Program:
        p = self._require_live(program_id)
        if p.status is old:
            self._set_status(p, new, self.clock())
            self.counters[counter] += 1
        return p

    def expire_idle(self) -> list[Program]:
        """Terminate (cause "idle") and return the programs idle for more than their span
        (``idle_expiry_s``, or twice a running tool's ``expected_s`` when longer), oldest
        first. Reasoning programs, programs with a held call and operator pauses never
        expire; a scheduler pause does not stop the clock. Cost: O(expired + 1)."""
        now = self.clock()
        expired = self._idle.due(now)
        for p in expired:
            self._terminate(p, "idle", now)
        return expired

    # ---- reading -------------------------------------------------------------------------

    def get(self, program_id: str) -> Program:
        """The latest incarnation of ``program_id``, live or kept terminated; UnknownProgram."""
        p = self._live.get(program_id)
        if p is not None:
            return p
        key = self._latest_terminated.get(program_id)
        if key is None:
            raise UnknownProgram(program_id)
        return self._terminated[key]

    def get_live(self, program_id: str) -> Program:
        """The live program with this id; UnknownProgram for an unknown or terminated id."""
        return self._require_live(program_id)

    def live_programs(self) -> list[Program]:
        """Live programs, in creation order (O(live))."""
        return list(self._live.values())

    def programs(self) -> list[Program]:
        """Live programs (creation order), then kept terminated ones (termination order)."""
        return [*self._live.values(), *self._terminated.values()]

    def record(self, program: Program) -> dict:
        """The JSON record of ``program`` (keys RECORD_KEYS), times settled up to now."""
        return program_record(program, self.clock())

    def paused_count(self) -> int:
        """Live programs paused now (by the scheduler or an operator). O(1)."""
        return self._status_counts[Status.PAUSED]

    def live_count_by(self) -> dict:
        """Live program counts by status and by phase."""
        return {
            "status": {s.value: n for s, n in self._status_counts.items()},
            "phase": {ph.value: n for ph, n in self._phase_counts.items()},
        }

    def __len__(self) -> int:
        """Number of live programs."""
        return len(self._live)

    # ---- internals -----------------------------------------------------------------------

    def _require_live(self, program_id: str) -> Program:
        p = self._live.get(program_id)
        if p is None:
            raise UnknownProgram(program_id)
        return p

    def _create(self, program_id: str, parent_id: str | None, now: float) -> Program:
        key = self._latest_terminated.get(program_id)
        incarnation = key[1] + 1 if key is not None else 1
        p = Program(program_id=program_id, incarnation=incarnation, parent_id=parent_id, created_at=now)
        self._live[program_id] = p
        self._status_counts[p.status] += 1
        self._phase_counts[p.phase] += 1
        self.counters["programs_created"] += 1
        return p

    def _set_phase(self, p: Program, phase: Phase, now: float) -> None:
        if p.phase is phase:
            return
        p.settle(now)
        self._phase_counts[p.phase] -= 1
        self._phase_counts[phase] += 1
        p.phase, p.phase_since = phase, now
        if phase is not Phase.ACTING:
            p.tool_kv = None  # describes an acting phase only

    def _set_status(self, p: Program, status: Status, now: float) -> None:
        p.settle(now)
        self._status_counts[p.status] -= 1
        if status is not Status.TERMINATED:
            self._status_counts[status] += 1
        p.status, p.status_since = status, now
        if status is not Status.PAUSED:
            p.kv_decision = None  # describes a paused program's KV only

    def _touch_idle(self, p: Program, now: float) -> None:
        """Restart the program's idle period at ``now`` and keep ``_idle`` exact."""
        p.idle_since = now
        self._idle.update(p)

    def _terminate(self, p: Program, cause: str, now: float) -> None:
        self._phase_counts[p.phase] -= 1
        self._set_status(p, Status.TERMINATED, now)
        p.release_cause, p.terminated_at = cause, now
        p.tool_running, p.tool_expected_s, p.tool_since = False, None, None
        p.acting_open, p.tool_predicted_s, p.tool_predicted_p90_s = False, None, None
        p.waiting = p.operator_paused = False
        self.tool_times.forget(p.program_id)
        self._idle.remove(p.program_id)
        del self._live[p.program_id]
        self.counters["releases"][cause] += 1
        key = (p.program_id, p.incarnation)
        self._terminated[key] = p
        self._latest_terminated[p.program_id] = key
        while len(self._terminated) > self.max_terminated:
            old_key, _ = self._terminated.popitem(last=False)
            if self._latest_terminated.get(old_key[0]) == old_key:
                del self._latest_terminated[old_key[0]]
            self.counters["records_evicted"] += 1
