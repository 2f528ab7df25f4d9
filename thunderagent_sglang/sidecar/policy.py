"""Pure lifecycle policy: which environments to destroy or pause, and which layers to remove.

No I/O and no clock: the manager passes ``now`` and snapshots of its state (``EnvView``), and
applies the returned decisions. Times are seconds on one monotonic clock.

Rules (in this order, an environment gets at most one decision per tick):
1. TTL: an environment older than ``ttl`` is destroyed, whatever its program does.
2. Idle TTL: an environment unused for ``idle_ttl`` is destroyed, unless it is busy (a command
   runs) or its program is paused by the scheduler: such a program is waiting, not idle, and
   its idle clock restarts when it is resumed.
3. Running cap: above ``max_running`` running environments, the surplus is paused: first those
   of paused programs, then the least recently used; busy ones are never paused.
"""

from __future__ import annotations

from dataclasses import dataclass, field

PENDING, RUNNING, PAUSED = "pending", "running", "paused"


@dataclass(frozen=True)
class EnvView:
    env_id: str
    program_id: str
    state: str  # PENDING (declared, not materialized), RUNNING or PAUSED
    created_at: float
    last_used_at: float
    busy: bool = False


@dataclass(frozen=True)
class GcLimits:
    ttl: float | None = None  # seconds; None = no limit
    idle_ttl: float | None = None
    max_running: int | None = None


@dataclass(frozen=True)
class GcDecision:
    destroy: tuple[tuple[str, str], ...] = ()  # (env_id, reason: "ttl" | "idle")
    pause: tuple[str, ...] = ()


@dataclass
class ProgramBook:
    """What the server told us about programs: which are paused, and since when each is resumed."""

    paused: set[str] = field(default_factory=set)
    resumed_at: dict[str, float] = field(default_factory=dict)

    def pause(self, program_id: str) -> None:
        self.paused.add(program_id)

    def resume(self, program_id: str, now: float) -> None:
        self.paused.discard(program_id)
        self.resumed_at[program_id] = now

    def forget(self, program_id: str) -> None:
        self.paused.discard(program_id)
        self.resumed_at.pop(program_id, None)

    def is_paused(self, program_id: str) -> bool:
        return program_id in self.paused

    def idle_since(self, env: EnvView) -> float:
        return max(env.last_used_at, self.resumed_at.get(env.program_id, env.last_used_at))


def decide(envs: list[EnvView], programs: ProgramBook, now: float, limits: GcLimits) -> GcDecision:
    destroy = [(e.env_id, reason) for e in envs if (reason := _reap_reason(e, programs, now, limits))]
    doomed = {env_id for env_id, _ in destroy}
    survivors = [e for e in envs if e.env_id not in doomed]
    return GcDecision(destroy=tuple(destroy), pause=tuple(_surplus(survivors, programs, limits)))


def _reap_reason(env: EnvView, programs: ProgramBook, now: float, limits: GcLimits) -> str | None:
    if limits.ttl is not None and now - env.created_at >= limits.ttl:
        return "ttl"
    if limits.idle_ttl is None or env.busy or programs.is_paused(env.program_id):
        return None
    if now - programs.idle_since(env) >= limits.idle_ttl:
        return "idle"
    return None


def _surplus(envs: list[EnvView], programs: ProgramBook, limits: GcLimits) -> list[str]:
    running = [e for e in envs if e.state == RUNNING]
    if limits.max_running is None or len(running) <= limits.max_running:
        return []
    candidates = sorted(
        (e for e in running if not e.busy),
        key=lambda e: (not programs.is_paused(e.program_id), e.last_used_at, e.env_id),
    )
    return [e.env_id for e in candidates[: len(running) - limits.max_running]]


@dataclass
class LayerBook:
    """Reference counts of layers (snapshots, images) by the environments that use them.

    A layer is removable when nothing references it, the sidecar made it (``owned``; a user's
    base directory or image is never removed) and its name is not on the keep list.
    """

    keep: frozenset[str] = frozenset()
    refs: dict[str, set[str]] = field(default_factory=dict)
    owned: set[str] = field(default_factory=set)

    def add(self, layer: str, owned: bool) -> None:
        self.refs.setdefault(layer, set())
        if owned:
            self.owned.add(layer)

    def ref(self, layer: str, env_id: str) -> None:
        self.refs.setdefault(layer, set()).add(env_id)

    def unref(self, env_id: str) -> list[str]:
        """Drops ``env_id``'s references; returns the layers that became removable."""
        freed = []
        for layer, users in self.refs.items():
            if env_id in users:
                users.discard(env_id)
                if self.removable(layer):
                    freed.append(layer)
        return freed

    def removable(self, layer: str) -> bool:
        return not self.refs.get(layer) and layer in self.owned and layer not in self.keep

    def drop(self, layer: str) -> None:
        self.refs.pop(layer, None)
        self.owned.discard(layer)

    def count(self, layer: str) -> int:
        return len(self.refs.get(layer, ()))
