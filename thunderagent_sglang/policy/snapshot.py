"""The scheduler's inputs and output: a program's view, the thresholds, the decision (pure).

``policy.scheduling.decide`` reads a snapshot of :class:`ProgramView` under a
:class:`SchedulerConfig` and answers a :class:`Decision`. All are frozen: the engine builds
them from its own state and applies the decision; nothing here holds a reference back.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["ACTING", "ACTIVE", "PAUSED", "REASONING", "Decision", "ProgramView",
           "SchedulerConfig"]

ACTIVE, PAUSED = "active", "paused"
RESUME_ORDERS = ("smallest", "attained")
REASONING, ACTING = "reasoning", "acting"


@dataclass(frozen=True)
class ProgramView:
    """One live tagged program as the scheduler sees it now.

    ``status``: active, or paused (held; a program never admitted yet is paused with
    ``is_new``). ``tool_seconds``: since its acting phase began, paused time included (0 when
    reasoning). ``waiting``: a request of it is held (always, for a new program).
    ``paused_seconds``: since it was paused (for a new one: since its first request arrived).
    ``marked``: to be paused at its next tool boundary. ``decode_headroom``: tokens its
    running or waiting requests may still add. Higher ``priority`` runs first.
    ``attained_s``: the seconds it has spent reasoning so far (its attained service).
    """

    program_id: str
    status: str
    phase: str
    context_tokens: int
    tool_seconds: float = 0.0
    waiting: bool = False
    priority: int = 0
    paused_seconds: float = 0.0
    marked: bool = False
    decode_headroom: int = 0
    is_new: bool = False
    attained_s: float = 0.0

    def __post_init__(self) -> None:
        if self.status not in (ACTIVE, PAUSED):
            raise ValueError(f"{self.program_id}: status must be active or paused, "
                             f"got {self.status!r}")
        if self.phase not in (REASONING, ACTING):
            raise ValueError(f"{self.program_id}: phase must be reasoning or acting, "
                             f"got {self.phase!r}")
        if self.is_new and not (self.status == PAUSED and self.waiting):
            raise ValueError(f"{self.program_id}: a new program is paused with a request waiting")
        if self.marked and self.status != ACTIVE:
            raise ValueError(f"{self.program_id}: only an active program can be marked")


@dataclass(frozen=True)
class SchedulerConfig:
    """Thresholds of the scheduler. Watermarks are fractions of ``capacity_tokens`` (the KV pool).

    ``max_pause_s`` / ``aging_step_s``: None turns the force-resume / aging off. ``backfill``:
    an idle engine takes a waiting program that fits under the high watermark out of order.
    ``resume_order``: within a class and priority, the queue resumes the smallest program first
    (``smallest``) or the one with the least attained service (``attained``: Autellix's PLAS;
    aging bounds starvation either way).
    """

    capacity_tokens: int
    high_watermark: float = 0.95
    low_watermark: float = 0.85
    half_life_s: float = 5.0
    decay: bool = True
    max_pause_s: float | None = 300.0
    aging_step_s: float | None = 60.0
    backfill: bool = True
    resume_order: str = "smallest"

    def __post_init__(self) -> None:
        if self.resume_order not in RESUME_ORDERS:
            raise ValueError(f"resume_order must be one of {RESUME_ORDERS}, "
                             f"got {self.resume_order!r}")
        if not self.capacity_tokens > 0:
            raise ValueError(f"capacity_tokens must be positive, got {self.capacity_tokens!r}")
        if not 0 < self.low_watermark <= self.high_watermark:
            raise ValueError("watermarks must satisfy 0 < low <= high (fractions of KV capacity), "
                             f"got low={self.low_watermark!r}, high={self.high_watermark!r}")
        for name in ("half_life_s", "max_pause_s", "aging_step_s"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")

    @property
    def high_tokens(self) -> float:
        return self.high_watermark * self.capacity_tokens

    @property
    def low_tokens(self) -> float:
        return self.low_watermark * self.capacity_tokens


@dataclass(frozen=True)
class Decision:
    """What to do now. ``resume`` may name new programs: admit those. ``footprint_tokens``:
    F of the active programs before; ``after_tokens``: F of the programs counted after."""

    pause: tuple[str, ...] = ()
    mark: tuple[str, ...] = ()
    unmark: tuple[str, ...] = ()
    resume: tuple[str, ...] = ()
    reasons: dict[str, str] = field(default_factory=dict)
    footprint_tokens: float = 0.0
    after_tokens: float = 0.0
