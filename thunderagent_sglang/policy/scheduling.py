"""Which programs to pause, mark and resume: a pure function of one snapshot (pure Python).

The engine calls :func:`decide` on every request arrival, every request finish and each tick,
with a :class:`ProgramView` of every live tagged program, and applies the :class:`Decision`.

Measure: ``F(S)`` = the decayed demand footprint of the programs in S (``policy.footprint``:
shared prefixes once, each block at its most-needed holder's weight; weight 1 when reasoning,
waiting or being resumed, the decay factor when active and acting, 1 with decay off) + their
decode headroom + the untagged requests' tokens (never held, but they use the pool).

Rules, in the order ``decide`` applies them (H, L: high and low watermark, in tokens):

1. Force-resume: a paused program with a request waiting, paused longer than ``max_pause_s``,
   resumes whatever the footprint (the starvation bound); it is counted from here on, so it
   is never re-paused in the same decision. One with no request waiting gains nothing from
   resuming and would be paused again; it is forced the moment its request arrives.
2. Marks: if ``F(all counted)`` < L the pressure is over and every mark is cleared; else a
   marked program that reached its tool boundary (acting) is paused.
3. Pause: marked programs count as gone; while the rest exceeds H, take acting programs, then
   reasoning ones, each class lowest priority then smallest context first (recompute grows with
   c^2): the shortest such prefix that brings it to H or below. Acting ones are paused now,
   reasoning ones are marked (never cut mid-decode; paused at their next tool boundary).
4. Resume: the queue of paused programs, ordered by class (request waiting; new programs,
   which thus never overtake paused ones; no request waiting), then aged priority (higher
   first; one level per ``aging_step_s`` paused), then smallest context. The longest prefix
   that keeps F below L resumes, strictly in order, so no program is overtaken by one behind
   it; only a program that could never fit (context + headroom >= L) is skipped.
5. Backfill an idle engine: if nothing resumed by rule 4, no counted program is reasoning and
   no untagged request runs (the engine has nothing to do), the first program in queue order
   with a request waiting whose whole context keeps F at or below H resumes, overtaking the
   head that does not fit. Under H, it causes no pause; waiting for the acting programs'
   decay instead leaves the engine idle (measured: 2.9 s of a 60 s window; none with it).
6. Alone: if no tagged program is counted after that, the head of the queue with a request
   waiting runs anyway, e.g. a program too large to ever fit.
7. Oversized alone: if nothing resumed, the head of the queue with a request waiting can never
   fit below L, and no counted program is reasoning (no tagged call in the engine), the
   counted (acting) programs are paused and the head runs alone; without this it would wait
   for max pause while others merely think about their next call.

Hysteresis: a pause needs F(counted minus marked) > H, a resume leaves F < L <= H, so a
footprint moving between L and H changes nothing, and nothing admitted is paused by the next
decision unless contexts grow by H - L (a program backfilled by rule 5 is admitted up to H, so
it has no such margin: it is admitted only when the engine would otherwise idle).

Cost: O(log n) footprint calls (each choice is the shortest or longest prefix of a fixed
order, found by bisection over a monotone F), each O(shared blocks + n log n); rule 5 adds up
to one footprint call per queued program, only on a decision taken while the engine is idle
(queue sizes differ, so F is not monotone in queue order). Every program
acted on or held gets a line in ``Decision.reasons``.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable, Sequence

from thunderagent_sglang.policy.footprint import Footprint, weighted_footprint
from thunderagent_sglang.policy.snapshot import (
    ACTING,
    ACTIVE,
    PAUSED,
    REASONING,
    Decision,
    ProgramView,
    SchedulerConfig,
)

__all__ = ["Decision", "ProgramView", "SchedulerConfig", "decide"]

Measure = Callable[[Iterable[str]], float]


def decide(views: Sequence[ProgramView], config: SchedulerConfig, footprint: Footprint,
           *, untagged_tokens: int = 0) -> Decision:
    """The decision for one snapshot (rules 1-6 of the module docstring)."""
    by_id = {v.program_id: v for v in views}
    if len(by_id) != len(views):
        raise ValueError("each program may appear only once in views")
    measure = _measurer(by_id, config, footprint, untagged_tokens)
    active = [v for v in views if v.status == ACTIVE]
    queue = sorted((v for v in views if v.status == PAUSED), key=lambda v: _resume_key(v, config))
    reasons: dict[str, str] = {}
    forced = [v.program_id for v in queue if _overdue(v, config)]
    for pid in forced:
        reasons[pid] = f"force-resumed: paused {by_id[pid].paused_seconds:.0f}s > max pause"
    counted = {v.program_id for v in active} | set(forced)
    before = measure(v.program_id for v in active)
    pause, mark, unmark = _apply_marks(active, measure(counted), config, reasons)
    committed = counted - {v.program_id for v in active if v.marked}
    if not unmark and measure(committed) > config.high_tokens:
        more = _pauses([v for v in active if not v.marked], committed, measure, config, reasons)
        pause += [pid for pid in more if by_id[pid].phase == ACTING]
        mark += [pid for pid in more if by_id[pid].phase == REASONING]
    running = counted - set(pause)
    backfill = config.backfill and not untagged_tokens and not forced and not any(
        v.phase == REASONING for v in active if v.program_id in running)
    resume = forced + _resumes([v for v in queue if v.program_id not in forced], running,
                               measure, config, reasons, idle=backfill)
    if not resume:
        alone = _oversized_alone(queue, [by_id[pid] for pid in running], config, reasons)
        if alone is not None:
            pause += sorted(running)
            running, resume = set(), [alone]
    return Decision(tuple(pause), tuple(mark), tuple(unmark), tuple(resume), reasons,
                    before, measure(running | set(resume)))


def _measurer(by_id: dict[str, ProgramView], config: SchedulerConfig, footprint: Footprint,
              untagged_tokens: int) -> Measure:
    """F(S): decayed footprint + decode headroom of S, + the untagged tokens (memoised)."""

    cache: dict[frozenset[str], float] = {}

    def measure(ids: Iterable[str]) -> float:
        key = frozenset(ids)
        if key not in cache:
            views = [by_id[pid] for pid in key]
            weights = {v.program_id: _weight(v, config) for v in views}
            headroom = sum(v.decode_headroom for v in views)
            cache[key] = weighted_footprint(weights, footprint) + headroom + untagged_tokens
        return cache[key]

    return measure


def _weight(view: ProgramView, config: SchedulerConfig) -> float:
    """1 when reasoning, waiting or paused (or decay off); else the decay factor of its tool
    time. A paused program is measured only to resume it, and then in full: once resumed, its
    next request runs unheld, so admitting it at its decayed value would let it skip the queue."""
    if view.phase == REASONING or view.waiting or view.status == PAUSED or not config.decay:
        return 1.0
    return 2.0 ** (-max(0.0, view.tool_seconds) / config.half_life_s)


def _overdue(view: ProgramView, config: SchedulerConfig) -> bool:
    limit = config.max_pause_s
    return view.waiting and limit is not None and view.paused_seconds > limit


def _aged_priority(view: ProgramView, config: SchedulerConfig) -> int:
    """Priority plus one level per ``aging_step_s`` paused (whole steps, so that programs paused
    about as long still go smallest first)."""
    if config.aging_step_s is None:
        return view.priority
    return view.priority + math.floor(view.paused_seconds / config.aging_step_s)


def _resume_key(view: ProgramView, config: SchedulerConfig) -> tuple:
    cls = 1 if view.is_new else 0 if view.waiting else 2
    size = view.attained_s if config.resume_order == "attained" else view.context_tokens
    return cls, -_aged_priority(view, config), size, view.program_id


def _pause_key(view: ProgramView) -> tuple:
    return view.phase != ACTING, view.priority, view.context_tokens, view.program_id


def _apply_marks(active: list[ProgramView], counted_tokens: float, config: SchedulerConfig,
                 reasons: dict[str, str]) -> tuple[list[str], list[str], list[str]]:
    """(pause, mark, unmark) from the existing marks: cleared below L, else honoured at the
    tool boundary."""
    marked = [v for v in active if v.marked]
    low = config.low_tokens
    if marked and counted_tokens < low:
        for v in marked:
            reasons[v.program_id] = f"unmarked: footprint {counted_tokens:.0f} < low {low:.0f}"
        return [], [], [v.program_id for v in marked]
    pause = [v.program_id for v in marked if v.phase == ACTING]
    for pid in pause:
        reasons[pid] = "paused: marked, reached its tool boundary"
    return pause, [], []


def _pauses(candidates: list[ProgramView], committed: set[str], measure: Measure,
            config: SchedulerConfig, reasons: dict[str, str]) -> list[str]:
    """The shortest prefix of the candidates in pause order whose removal brings F to H."""
    ordered = sorted(candidates, key=_pause_key)
    ids = [v.program_id for v in ordered]
    high = config.high_tokens
    n = min(len(ids), _first(len(ids), lambda m: measure(committed - set(ids[:m])) <= high))
    for v in ordered[:n]:
        what = "marked: reasoning, pause at its tool boundary" if v.phase == REASONING \
            else "paused: acting"
        reasons[v.program_id] = f"{what}; footprint {measure(committed):.0f} > high {high:.0f}"
    return ids[:n]


def _resumes(queue: list[ProgramView], running: set[str], measure: Measure,
             config: SchedulerConfig, reasons: dict[str, str], *, idle: bool) -> list[str]:
    """The longest prefix of the (fitting) queue that keeps F below L; else, on an idle
    engine, the first waiting program that keeps F at or below H; else, with nothing tagged
    running, the first program with a request waiting, alone."""
    low = config.low_tokens
    fitting = [v.program_id for v in queue if _fits_ever(v, config)]
    n = _first(len(fitting), lambda m: measure(running | set(fitting[:m])) >= low) - 1
    chosen = fitting[: max(0, n)]
    for pid in chosen:
        reasons[pid] = f"resumed: footprint stays below low {low:.0f}"
    if not chosen and running and idle:
        chosen = _backfill(queue, running, measure, config, reasons)
    if not chosen and not running:
        head = next((v.program_id for v in queue if v.waiting), None)
        if head is not None:
            reasons[head] = "resumed alone: no tagged program is running"
            chosen = [head]
    for v in queue:
        if v.waiting and v.program_id not in chosen:
            reasons[v.program_id] = f"held: no room below low {low:.0f}" if _fits_ever(v, config) \
                else "held: never fits below low; runs alone or after max pause"
    return chosen


def _backfill(queue: list[ProgramView], running: set[str], measure: Measure,
              config: SchedulerConfig, reasons: dict[str, str]) -> list[str]:
    """Rule 5: the first waiting program in queue order that keeps F at or below H."""
    high = config.high_tokens
    for v in queue:
        if v.waiting and measure(running | {v.program_id}) <= high:
            reasons[v.program_id] = f"resumed: engine idle, footprint stays at or below high " \
                                    f"{high:.0f}"
            return [v.program_id]
    return []


def _oversized_alone(queue: list[ProgramView], running: list[ProgramView],
                     config: SchedulerConfig, reasons: dict[str, str]) -> str | None:
    """Rule 7: the head of the waiting queue can never fit below L, and no counted program
    has a call in the engine: it runs alone, the acting programs paused for it."""
    head = next((v for v in queue if v.waiting), None)
    if head is None or _fits_ever(head, config) or not running:
        return None
    if any(v.phase == REASONING for v in running):
        return None
    reasons[head.program_id] = "resumed alone: never fits below low; no tagged call running"
    for v in running:
        reasons[v.program_id] = f"paused: {head.program_id} runs alone"
    return head.program_id


def _fits_ever(view: ProgramView, config: SchedulerConfig) -> bool:
    """Whether the program alone (in full, with its headroom) is below the low watermark."""
    return view.context_tokens + view.decode_headroom < config.low_tokens


def _first(n: int, pred: Callable[[int], bool]) -> int:
    """The smallest m in [0, n] with pred(m), for pred monotone (false then true); n + 1 if none.
    O(log n) calls."""
    lo, hi = 0, n + 1
    while lo < hi:
        mid = (lo + hi) // 2
        if pred(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo
