"""A program's state and its JSON record (pure Python, no SGLang import).

The table (``table.py``) owns and changes these objects; everything here only describes them.
Times are on the table's clock (monotonic by default) and never appear in the record.
"""

from __future__ import annotations

from typing import Any

from dataclasses import dataclass, field
from enum import Enum


class Phase(str, Enum):
    """Reasoning while a request of the program is in the engine, acting (tool time) otherwise."""

    REASONING = "reasoning"
    ACTING = "acting"


class Status(str, Enum):
    """Active or paused while live; terminated is final for an incarnation."""

    ACTIVE = "active"
    PAUSED = "paused"
    TERMINATED = "terminated"


class ProgramBusy(RuntimeError):
    """The program has calls running here, so it cannot move (HTTP 409)."""

    def __init__(self, program_id: str, running: int):
        super().__init__(program_id)
        self.program_id, self.running = program_id, running

    def __str__(self) -> str:
        return (f"program {self.program_id!r} has {self.running} call(s) running on this "
                "replica; it can move only while none runs")


class UnknownProgram(KeyError):
    """No program (live, or for ``get`` also kept terminated) has this id."""

    def __init__(self, program_id: str):
        super().__init__(program_id)
        self.program_id = program_id

    def __str__(self) -> str:
        return f"unknown program id {self.program_id!r}"


RELEASE_CAUSES = ("explicit", "final", "idle", "migrated")

RECORD_KEYS = (
    "program_id", "incarnation", "parent_id", "status", "phase", "context_tokens", "steps",
    "prefill_tokens_computed", "prefill_tokens_cached", "missed_evicted_tokens",
    "missed_changed_tokens", "decode_tokens", "seconds_reasoning",
    "seconds_acting", "seconds_paused", "in_flight", "tool_running", "tool", "tool_expected_s",
    "tool_predicted_s", "tool_predicted_p90_s", "release_cause", "kv_decision", "tool_kv",
    "environments",
)


@dataclass(slots=True, eq=False)
class Program:
    """One incarnation of a program id. Mutated only by the ProgramTable.

    Invariants: phase is REASONING iff in_flight is non-empty; a terminated program has nothing
    in flight and a release_cause; seconds_* are settled up to ``settled_at`` (the last phase or
    status transition); ``idle_since`` is the program's last own activity (a call arrived,
    was held, left the queue or finished, a tool hint, an operator resume) and is meaningful
    only while the program is idle.
    """

    program_id: str
    incarnation: int
    parent_id: str | None
    created_at: float
    status: Status = Status.ACTIVE
    phase: Phase = Phase.ACTING
    in_flight: set[str] = field(default_factory=set)
    steps: int = 0
    context_tokens: int = 0
    prefill_tokens_computed: int = 0
    prefill_tokens_cached: int = 0
    missed_evicted_tokens: int = 0  # own previous tokens recomputed: their KV was evicted
    missed_changed_tokens: int = 0  # recomputed because the client changed its earlier prefix
    decode_tokens: int = 0
    last_sequence: Any = None  # tokens with KV of its latest finished call (scheduler glue sets it)
    last_full_sequence: Any = None  # prompt + output of that call (for linking untagged calls)
    seconds_reasoning: float = 0.0
    seconds_acting: float = 0.0
    seconds_paused: float = 0.0
    phase_since: float = 0.0
    status_since: float = 0.0
    settled_at: float = 0.0
    idle_since: float = 0.0
    release_requested: bool = False
    requested_cause: str | None = None  # "explicit" | "final" while release_requested
    release_cause: str | None = None  # "explicit" | "final" | "idle" | "migrated" once ended
    terminated_at: float | None = None
    tool_running: bool = False
    tool_expected_s: float | None = None
    tool_since: float | None = None  # when the running tool hint started
    tool: str | None = None  # the tool named for this acting phase (a hint or a sidecar exec)
    tool_key: str | None = None  # its duration model's name (``other`` beyond the bound)
    tool_predicted_s: float | None = None  # this acting phase's predicted length: median, p90
    tool_predicted_p90_s: float | None = None
    acting_open: bool = False  # an acting phase after a call whose length is not observed yet
    waiting: bool = False  # a call of it is held by the scheduler
    paused_since_call: bool = False  # paused since its last call finished (misses attributed)
    operator_paused: bool = False  # paused by an operator (until an operator resumes it)
    kv_decision: str | None = None  # keep|offload|drop while paused (the cache glue sets it)
    tool_kv: str | None = None  # keep|offload|drop at this acting phase's start (the glue sets it)
    environments: list | None = None  # the sidecar's last report (program.environments), if any

    def __post_init__(self) -> None:
        self.phase_since = self.status_since = self.settled_at = self.idle_since = self.created_at

    @property
    def live(self) -> bool:
        return self.status is not Status.TERMINATED

    @property
    def idle(self) -> bool:
        """Counts toward idle expiry: live, acting, no call held and not paused by an operator.
        A scheduler pause counts (the agent of a paused program may have crashed)."""
        return (self.live and self.phase is Phase.ACTING and not self.waiting
                and not self.operator_paused)

    def idle_span(self, idle_expiry_s: float) -> float:
        """How long after ``idle_since`` an idle program expires: the idle expiry, or twice a
        running tool's ``expected_s`` when that is longer."""
        if self.tool_running and self.tool_expected_s is not None:
            return max(idle_expiry_s, 2.0 * self.tool_expected_s)
        return idle_expiry_s

    def unsettled_seconds(self, now: float) -> tuple[float, float, float]:
        """(reasoning, acting, paused) seconds accrued since ``settled_at``, not yet added."""
        dt = max(0.0, now - self.settled_at)
        if self.status is Status.PAUSED:
            return 0.0, 0.0, dt
        if self.status is Status.ACTIVE:
            return (dt, 0.0, 0.0) if self.phase is Phase.REASONING else (0.0, dt, 0.0)
        return 0.0, 0.0, 0.0

    def settle(self, now: float) -> None:
        """Add the time since the last settlement to the bucket of the current phase/status."""
        reasoning, acting, paused = self.unsettled_seconds(now)
        self.seconds_reasoning += reasoning
        self.seconds_acting += acting
        self.seconds_paused += paused
        self.settled_at = max(self.settled_at, now)


def program_record(p: Program, now: float) -> dict:
    """The JSON record of ``p`` (keys RECORD_KEYS), times settled up to ``now``, no clock values."""
    reasoning, acting, paused = p.unsettled_seconds(now)
    return {
        "program_id": p.program_id,
        "incarnation": p.incarnation,
        "parent_id": p.parent_id,
        "status": p.status.value,
        "phase": p.phase.value,
        "context_tokens": p.context_tokens,
        "steps": p.steps,
        "prefill_tokens_computed": p.prefill_tokens_computed,
        "prefill_tokens_cached": p.prefill_tokens_cached,
        "missed_evicted_tokens": p.missed_evicted_tokens,
        "missed_changed_tokens": p.missed_changed_tokens,
        "decode_tokens": p.decode_tokens,
        "seconds_reasoning": round(p.seconds_reasoning + reasoning, 3),
        "seconds_acting": round(p.seconds_acting + acting, 3),
        "seconds_paused": round(p.seconds_paused + paused, 3),
        "in_flight": len(p.in_flight),
        "tool_running": p.tool_running,
        "tool": p.tool,
        "tool_expected_s": p.tool_expected_s,
        "tool_predicted_s": _rounded(p.tool_predicted_s),
        "tool_predicted_p90_s": _rounded(p.tool_predicted_p90_s),
        "release_cause": p.release_cause,
        "kv_decision": p.kv_decision,
        "tool_kv": p.tool_kv,
        "environments": p.environments,
    }


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 3)
