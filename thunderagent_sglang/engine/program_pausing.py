"""Program scheduling inside the engine (glue for ``policy.scheduling``): hold, pause, resume.

A tagged request of a paused program (or of a program not admitted yet) is held here, outside
SGLang's waiting queue, and handed to SGLang when its program resumes. On every arrival, every
finish and each tick the policy's ``decide`` reads a snapshot of the live programs (their demand
from the ledger, shared prefixes once) and this module applies what it says: pause (the cache
then keeps, offloads or drops the program's KV), mark (pause at the next tool boundary),
resume (prefetch its KV, release its held requests). Untagged requests are never held.
Operator pauses (``POST /programs/{id}/pause``) hold the program until the operator resumes it.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable

from thunderagent_sglang.engine import offload
from thunderagent_sglang.engine.logs import get_logger
from thunderagent_sglang.engine.program_tree import RESIDENCY
from thunderagent_sglang.policy.footprint import ledger_footprint
from thunderagent_sglang.policy.scheduling import decide
from thunderagent_sglang.policy.snapshot import PAUSED, ProgramView, SchedulerConfig
from thunderagent_sglang.program.record import Phase, Status

_HEADROOM_CAP = 1 << 14  # a request's max_new_tokens counted as decode headroom, at most


@dataclasses.dataclass
class Held:
    program_id: str
    rid: str
    since: float
    max_new: int
    # Hands the request to SGLang; admit(False) skips our arrival bookkeeping (an abort or a
    # shutdown answers it at once through SGLang's own abort path).
    admit: Callable[..., object]


@dataclasses.dataclass
class _State:
    enabled: bool = False  # the thunder scheduler decides (off: operator pauses only)
    config: SchedulerConfig | None = None
    tick_s: float = 0.5
    last_tick: float = 0.0
    held: dict = dataclasses.field(default_factory=dict)  # program id -> [Held]
    marked: set = dataclasses.field(default_factory=set)
    operator: set = dataclasses.field(default_factory=set)  # paused by an operator
    headroom: dict = dataclasses.field(default_factory=dict)  # rid -> (program id|None, tokens)
    priority: dict = dataclasses.field(default_factory=dict)  # program id -> int
    counters: dict = dataclasses.field(default_factory=lambda: {
        "held_requests": 0, "held_aborted": 0, "held_shutdown": 0, "decisions": 0,
        "force_resumes": 0, "marks": 0})
    table: object = None
    ledger: object = None
    last_footprint: float = 0.0
    notify: Callable[[str, str], None] = lambda program_id, event: None
    cfg: object = None  # the ThunderAgentConfig (the pool's size comes later)
    # Set at shutdown: answers a held call at once (HTTP 503); nothing is held after that.
    shutdown_answer: Callable[[Held], None] | None = None


S = _State()


def install(cfg, table, ledger, notify=None) -> None:
    S.enabled = cfg.scheduler == "thunder"
    S.tick_s = cfg.tick_s
    S.table, S.ledger = table, ledger
    S.notify = notify or S.notify
    S.config = None  # set once the pool's size is known (``set_capacity``)
    S.cfg = cfg


def set_capacity(tokens: int) -> None:
    cfg = S.cfg
    S.config = SchedulerConfig(
        capacity_tokens=max(1, int(tokens)), high_watermark=cfg.high_watermark,
        low_watermark=cfg.low_watermark, half_life_s=cfg.decay_half_life_s,
        max_pause_s=cfg.max_pause_s, backfill=cfg.backfill)
    get_logger().info(
        "ThunderAgent scheduler: %s; KV capacity %d tokens, pause above %.0f, resume below %.0f, "
        "tick %.2f s, max pause %.0f s, idle backfill %s",
        "on" if S.enabled else "off (operator pauses only)", S.config.capacity_tokens,
        S.config.high_tokens, S.config.low_tokens, S.tick_s, cfg.max_pause_s,
        "on" if cfg.backfill else "off")


# --- arrivals, finishes ------------------------------------------------------------------

def set_priority(program_id: str, priority: int | None) -> None:
    if priority is not None:
        S.priority[program_id] = priority


def should_hold(program_id: str) -> bool:
    """Hold a tagged request? Its program is paused, or new while the scheduler decides."""
    if program_id in S.held:
        return True  # keep its requests in order behind the held one
    program = S.table.live_program(program_id)
    if program is not None:
        return program.status is Status.PAUSED
    return S.enabled and S.config is not None


def hold(program_id: str, rid: str, max_new: int, admit: Callable[[], object]) -> None:
    item = Held(program_id, rid, time.monotonic(), _headroom_of(max_new), admit)
    S.counters["held_requests"] += 1
    if S.shutdown_answer is not None:  # the server is draining: never wait for a resume
        _answer_at_shutdown([item])
        return
    first = program_id not in S.held
    S.held.setdefault(program_id, []).append(item)
    program = S.table.live_program(program_id)
    if first and program is not None:
        S.notify(program_id, "prepare")  # a paused program with a call waiting is next
    get_logger().debug("ThunderAgent scheduler: held %s of program %s", rid, program_id)


def admitted(rid: str, program_id: str | None, max_new: int, prompt_tokens: int = 0) -> None:
    """A call went to SGLang: it may still add ``max_new`` tokens (untagged calls also count
    their prompt here: no ledger holds it)."""
    S.headroom[rid] = (program_id, _headroom_of(max_new) + prompt_tokens)


def finished(rid: str) -> None:
    S.headroom.pop(rid, None)


def _headroom_of(max_new) -> int:
    return min(int(max_new or 0), _HEADROOM_CAP)


def forget(program_id: str) -> None:
    """A program ended: nothing of it stays here (held requests were released first)."""
    S.marked.discard(program_id)
    S.operator.discard(program_id)
    S.priority.pop(program_id, None)


# --- operator control ----------------------------------------------------------------------

def operator_pause(program) -> None:
    S.operator.add(program.program_id)
    S.marked.discard(program.program_id)
    _paused(program, "operator")


def operator_resume(program, decision: str | None) -> None:
    S.operator.discard(program.program_id)
    _resumed(program, decision, "operator")


def _paused(program, reason: str) -> None:
    pid = program.program_id
    _set_active(pid, False)
    offload.on_pause(program)
    S.notify(pid, "paused")
    get_logger().debug("ThunderAgent scheduler: paused %s (%s)", pid, reason)


def _resumed(program, decision: str | None, reason: str) -> None:
    pid = program.program_id
    _set_active(pid, True)
    offload.on_resume(pid, decision)
    S.notify(pid, "resumed")
    get_logger().debug("ThunderAgent scheduler: resumed %s (%s)", pid, reason)
    release_held(pid)


def _set_active(pid: str, active: bool) -> None:
    """Demand and residency count only active programs."""
    if pid in S.ledger:
        S.ledger.set_active(pid, active)
    if pid in RESIDENCY:
        RESIDENCY.set_active(pid, active)


def release_held(program_id: str) -> int:
    """Hand a program's held requests to SGLang, oldest first."""
    held = S.held.pop(program_id, [])
    for item in held:
        item.admit()
    return len(held)


# --- the decision ---------------------------------------------------------------------------

def maybe_tick() -> None:
    now = time.monotonic()
    if now - S.last_tick >= S.tick_s:
        S.last_tick = now
        check("tick")


def check(event: str) -> None:
    """Run the policy on the current snapshot and apply its decision."""
    if not S.enabled or S.config is None:
        return
    try:
        views = snapshot(time.monotonic())
        if not views:
            return
        decision = decide(views, S.config, ledger_footprint(S.ledger),
                          untagged_tokens=untagged_tokens())
    except Exception:  # noqa: BLE001 - fail open: never strand a held call
        get_logger().exception("ThunderAgent scheduler: decision failed; releasing held calls "
                               "of programs that are not paused")
        for pid in list(S.held):
            program = S.table.live_program(pid)
            if program is None or program.status is Status.ACTIVE:
                release_held(pid)
        return
    S.counters["decisions"] += 1
    S.last_footprint = decision.after_tokens
    apply(decision, event)


def snapshot(now: float) -> list[ProgramView]:
    views = []
    for program in S.table.live_programs():
        pid = program.program_id
        if pid in S.operator or pid not in S.ledger:
            continue
        views.append(_view(program, pid, now))
    for pid, held in S.held.items():
        if S.table.live_program(pid) is None and pid in S.ledger:
            views.append(ProgramView(
                pid, PAUSED, "acting", S.ledger.context_tokens(pid), waiting=True,
                priority=S.priority.get(pid, 0), paused_seconds=now - held[0].since,
                decode_headroom=sum(h.max_new for h in held), is_new=True))
    return views


def _view(program, pid: str, now: float) -> ProgramView:
    acting = program.phase is Phase.ACTING
    paused = program.status is Status.PAUSED
    held = S.held.get(pid, ())
    running = sum(t for p, t in S.headroom.values() if p == pid)
    return ProgramView(
        pid, program.status.value, program.phase.value, S.ledger.context_tokens(pid),
        tool_seconds=max(0.0, now - program.phase_since) if acting else 0.0,
        waiting=bool(held), priority=S.priority.get(pid, 0),
        paused_seconds=max(0.0, now - program.status_since) if paused else 0.0,
        marked=pid in S.marked and not paused,
        decode_headroom=running + sum(h.max_new for h in held))


def untagged_tokens() -> int:
    return sum(t for p, t in S.headroom.values() if p is None)


def apply(decision, event: str) -> None:
    log = get_logger()
    for pid in decision.pause:
        program = S.table.live_program(pid)
        if program is not None and program.status is Status.ACTIVE:
            S.table.pause(pid)
            S.marked.discard(pid)
            _paused(program, decision.reasons.get(pid, event))
    for pid in decision.mark:
        S.marked.add(pid)
        S.counters["marks"] += 1
        log.debug("ThunderAgent scheduler: marked %s (%s)", pid, decision.reasons.get(pid, event))
    for pid in decision.unmark:
        S.marked.discard(pid)
    for pid in decision.resume:
        reason = decision.reasons.get(pid, event)
        if reason.startswith("force-resumed"):
            S.counters["force_resumes"] += 1
        program = S.table.live_program(pid)
        if program is None:
            log.debug("ThunderAgent scheduler: admitted new program %s (%s)", pid, reason)
            release_held(pid)
        elif program.status is Status.PAUSED:
            before = program.kv_decision
            S.table.resume(pid)
            _resumed(program, before, reason)


# --- held requests that must end -------------------------------------------------------------

def release_for_abort(rid_prefix: str, abort_all: bool) -> int:
    """Hand held requests an abort names to SGLang, so its own abort answers them."""
    count = 0
    for pid in list(S.held):
        keep = []
        for item in S.held[pid]:
            if abort_all or item.rid.startswith(rid_prefix):
                item.admit(False)
                count += 1
            else:
                keep.append(item)
        if keep:
            S.held[pid] = keep
        else:
            del S.held[pid]
    S.counters["held_aborted"] += count
    return count


def shut_down(answer: Callable[[Held], None]) -> int:
    """The server is shutting down: every held call, and any held later, is answered at once
    by ``answer`` (HTTP 503 through SGLang's abort path), so the drain does not wait for
    resumes. Returns how many were held."""
    S.shutdown_answer = answer
    items = [item for held in S.held.values() for item in held]
    S.held.clear()
    _answer_at_shutdown(items)
    get_logger().info("ThunderAgent scheduler: shutting down; %d held call(s) answered 503",
                      len(items))
    return len(items)


def _answer_at_shutdown(items: list[Held]) -> None:
    for item in items:
        S.shutdown_answer(item)
    S.counters["held_shutdown"] += len(items)


def held_count(program_id: str | None = None) -> int:
    if program_id is not None:
        return len(S.held.get(program_id, ()))
    return sum(len(v) for v in S.held.values())


def record_fields(program_id: str) -> dict:
    return {"waiting": held_count(program_id), "marked": program_id in S.marked,
            "operator_paused": program_id in S.operator,
            "priority": S.priority.get(program_id, 0)}


def stats() -> dict:
    """Counters, and the scheduler's own measure after its last decision (tokens)."""
    cfg = S.config
    return {**S.counters, "held_now": held_count(), "marked_now": len(S.marked),
            "enabled": S.enabled, "footprint_tokens": round(S.last_footprint, 1),
            "capacity_tokens": cfg.capacity_tokens if cfg else None,
            "high_tokens": cfg.high_tokens if cfg else None,
            "low_tokens": cfg.low_tokens if cfg else None}
