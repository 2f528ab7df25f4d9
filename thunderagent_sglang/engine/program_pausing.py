"""Program scheduling inside the engine (glue for ``policy.scheduling``): hold, pause, resume.

``ProgramScheduler`` belongs to the ``ProgramRuntime`` and holds what only scheduling needs:
the held calls, marks, priorities and the decision's counters (operator pauses are the
table's). A tagged call
of a paused program (or of a program not admitted yet) is held outside SGLang's waiting queue
and handed to SGLang when its program resumes. On every arrival, every finish and each tick
the policy's ``decide`` reads a snapshot of the live programs (their demand from the ledger,
shared prefixes once) and ``apply`` carries it out through the runtime's ``pause`` and
``resume``: pause (the cache then keeps, offloads or drops the program's KV), mark (pause at
the next tool boundary), resume (prefetch its KV, release its held calls). Untagged calls are
never held. Operator pauses hold a program until the operator resumes it.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from thunderagent_sglang import config
from thunderagent_sglang.engine.held import Held, HeldCalls
from thunderagent_sglang.engine.logs import get_logger
from thunderagent_sglang.policy.admission import PERIOD_S, AdmissionControl, Observed
from thunderagent_sglang.policy.batching import OFF_BELOW, ON_FROM, decay_wanted
from thunderagent_sglang.policy.footprint import ledger_footprint
from thunderagent_sglang.policy.scheduling import decide
from thunderagent_sglang.policy.snapshot import PAUSED, ProgramView, SchedulerConfig
from thunderagent_sglang.program import events
from thunderagent_sglang.program.record import Phase, Status

HEADROOM_CAP = 1 << 14  # a call's max_new_tokens counted as decode headroom, at most
BUSY_MESSAGE = ("Too many calls are waiting for their programs to resume (--thunderagent-max-held "
                "{limit}); this call was not started. Retry after {retry} s.")


class ProgramScheduler:
    def __init__(self, runtime, cfg):
        self.runtime = runtime
        self.cfg = cfg
        self.enabled = cfg.scheduler == "thunder"  # off: operator pauses only
        self.config: SchedulerConfig | None = None  # once the pool's size is known
        self.held = HeldCalls()
        self.marked: set[str] = set()
        self.priority: dict[str, int] = {}
        self.counters = {"held_requests": 0, "held_aborted": 0, "held_shutdown": 0,
                         "held_refused": 0, "held_migrated": 0,
                         "decisions": 0, "force_resumes": 0, "marks": 0,
                         "retraction_orders": 0, "decay_switches": 0, "admission_changes": 0,
                         "checks_skipped": 0}
        self.last_tick = 0.0
        self.last_footprint = 0.0
        # --thunderagent-admission feedback: the factor on the pool, and its period's measures
        self.admission = AdmissionControl() if cfg.admission == "feedback" else None
        self.base_capacity = 0  # the pool the watermarks apply to, before the factor
        self.device_tokens = 0
        # (start, active-eviction misses then, idle_waiting_s then) of the current period
        self._period: tuple[float, int, float] | None = None
        self._last_loop: float | None = None
        self._idle_then = False  # at the last loop: no call in the engine, one held for room
        self.idle_waiting_s = 0.0  # no call in the engine while one waited for room, in all
        self.draining = 0  # writers waiting for SGLang's calls in flight: hold nothing
        self.frozen = False  # SGLang's memory is released: held calls stay held
        # Set at shutdown: answers a held call at once (HTTP 503); nothing is held after that.
        self.shutdown_answer: Callable[[Held], None] | None = None

    def set_capacity(self, tokens: int, host_tokens: int = 0) -> None:
        """``tokens``: the device pool; ``host_tokens``: the host tier's, of which
        ``--thunderagent-host-admission`` counts a share."""
        cfg = self.cfg
        counted_host = int(cfg.host_admission * host_tokens)
        if counted_host:
            get_logger().info("ThunderAgent scheduler: counting %d of the host tier's %d tokens "
                              "as room (--thunderagent-host-admission %g)", counted_host,
                              host_tokens, cfg.host_admission)
        self.device_tokens = max(1, int(tokens))
        self.base_capacity = self.device_tokens + counted_host
        factor = self.admission.factor if self.admission is not None else 1.0
        self.config = SchedulerConfig(
            capacity_tokens=max(1, int(self.base_capacity * factor)),
            high_watermark=cfg.high_watermark,
            low_watermark=cfg.low_watermark, half_life_s=cfg.decay_half_life_s,
            decay=cfg.decay != "off", max_pause_s=cfg.max_pause_s, backfill=cfg.backfill,
            resume_order=cfg.resume_order)
        get_logger().info(
            "ThunderAgent scheduler: %s; KV capacity %d tokens, pause above %.0f, resume below "
            "%.0f, tick %.2f s, max pause %.0f s, idle backfill %s",
            "on" if self.enabled else "off (operator pauses only)", self.config.capacity_tokens,
            self.config.high_tokens, self.config.low_tokens, cfg.tick_s, cfg.max_pause_s,
            "on" if cfg.backfill else "off")
        self._trace_config(self.runtime.clock())

    # ---- arrivals --------------------------------------------------------------------------

    def set_priority(self, program_id: str, priority: int | None) -> None:
        if priority is not None:
            self.priority[program_id] = priority

    def should_hold(self, program_id: str) -> bool:
        """Hold a tagged call? Its program is paused, or new while the scheduler decides;
        never while a writer waits for the calls in flight."""
        if self.draining:
            return False
        if program_id in self.held:
            return True  # keep its calls in order behind the held one
        program = self.runtime.table.live_program(program_id)
        if program is not None:
            return program.status is Status.PAUSED
        return self.enabled and self.config is not None

    def contended(self) -> bool:
        """The device pool cannot hold every active program's KV: their demand (in full,
        shared prefixes once) exceeds the device pool. Then some of it will be evicted (decay,
        host admission or admission by feedback admit more than the pool holds); otherwise
        freeing an acting program's KV makes room nobody uses (the scheduler admits by
        demand, not by what is resident)."""
        if self.config is None:
            return True
        return self.runtime.ledger.demand_tokens() > self.device_tokens

    def full(self) -> bool:
        """As many calls are held as ``--thunderagent-max-held`` allows."""
        return self.held.count() >= self.cfg.max_held

    def refuse(self, admit: Callable[..., object], rid: str) -> None:
        """Answer a call 429 at once (``Retry-After`` is added by the HTTP process)."""
        self.counters["held_refused"] += 1
        self.runtime.answer_now(admit, rid, 429, BUSY_MESSAGE.format(
            limit=self.cfg.max_held, retry=config.RETRY_AFTER_S))

    def refuse_over_bound(self, rid: str) -> None:
        """After the arrival's decision: if more calls are held than the bound allows and
        ``rid`` is still held, it leaves the queue answered 429 (its program, if never
        admitted, leaves nothing behind)."""
        if self.held.count() <= self.cfg.max_held:
            return
        items = self.held.take(lambda item: item.rid == rid)
        for item in items:
            self.refuse(item.admit, item.rid)
        self._left_queue(items)

    def hold(self, program_id: str, rid: str, max_new: int, admit: Callable[..., object],
             chain=None, prompt=None, waited_s: float = 0.0) -> None:
        """Hold a call; ``waited_s``: a router held it that long before (its program moved
        here), so its wait counts from then toward max pause."""
        now = self.runtime.clock()
        item = Held(program_id, rid, now - waited_s, self.headroom_of(max_new), admit, chain)
        extra = {"waited": round(waited_s, 3)} if waited_s else {}
        self.runtime.trace.write("held", now, p=program_id, rid=rid,
                                 tokens=prompt or (), headroom=item.max_new, **extra)
        self.counters["held_requests"] += 1
        self.runtime.events.add("held", program_id)
        self.runtime.offload.call_came(program_id)
        if self.shutdown_answer is not None:  # the server is draining: never wait for a resume
            self._answer_at_shutdown([item])
            return
        first = self.held.add(item)
        if first and self.runtime.table.set_waiting(program_id, True) is not None:
            self.runtime.notify(program_id, events.PREPARE)  # a paused program with a call waiting
        get_logger().debug("ThunderAgent scheduler: held %s of program %s", rid, program_id)

    @staticmethod
    def headroom_of(max_new) -> int:
        return min(int(max_new or 0), HEADROOM_CAP)

    def forget(self, program_id: str) -> None:
        """A program ended: nothing of it stays here but its held calls (released next)."""
        self.marked.discard(program_id)
        self.priority.pop(program_id, None)

    def release_held(self, program_id: str) -> int:
        """Hand a program's held calls to SGLang, oldest first (not while SGLang's memory is
        released, unless a writer waits for them)."""
        if self.frozen and not self.draining:
            return 0
        held = self.held.pop(program_id)
        if held:
            self.runtime.table.set_waiting(program_id, False)
        for item in held:
            item.admit(chain=item.chain)
        return len(held)

    # ---- the decision ----------------------------------------------------------------------

    def maybe_tick(self) -> None:
        now = self.runtime.clock()
        if now - self.last_tick >= self.cfg.tick_s:
            self.last_tick = now
            self.check("tick")

    def check_if_needed(self, event: str) -> None:
        """At a tagged call's arrival and after a batch in which calls finished. The decision
        reads every live program; it can change something only while a program is marked (it
        pauses at its tool boundary), a call is held or a program paused (room may have
        come), or what every counted program holds, each in full, plus every running call's
        headroom passes the high watermark (the measure of the counted set is at most that).
        Otherwise it is skipped, so a call costs O(1) in the number of live programs; the
        tick decides every ``tick_s`` as ever."""
        if self._deciding() and self._nothing_to_decide():
            self.counters["checks_skipped"] += 1
            return
        self.check(event)

    def _measure_bound(self) -> int:
        """What every counted program holds, each in full, plus every running call's headroom:
        the scheduler's measure is at most this."""
        return self.runtime.ledger.demand_tokens() + self.runtime.all_running_headroom()

    def _nothing_to_decide(self) -> bool:
        return (not self.marked and not self.held.count()
                and not self.runtime.table.paused_count()
                and self._measure_bound() <= self.config.high_tokens)

    def _deciding(self) -> bool:
        """Decisions are made: the scheduler is on, knows the pool, and SGLang's memory is
        not released."""
        return self.enabled and self.config is not None and not self.frozen

    def check(self, event: str) -> None:
        """Run the policy on the current snapshot and apply its decision."""
        if not self._deciding():
            return
        try:
            now = self.runtime.clock()
            self._update_decay(now)
            self._update_admission(now)
            views = self.snapshot(now)
            if not views:  # nothing tagged is live: the measure is the untagged calls' alone
                self.last_footprint = float(self.runtime.running_headroom(None))
                return
            untagged = self.runtime.running_headroom(None)
            decision = decide(views, self.config, ledger_footprint(self.runtime.ledger),
                              untagged_tokens=untagged)
            self.runtime.trace.check(now, event, views, untagged, decision)
        except Exception:  # noqa: BLE001 - fail open: never strand a held call
            get_logger().exception("ThunderAgent scheduler: decision failed; releasing held "
                                   "calls of programs that are not paused")
            self._release_unpaused(new_too=True)
            return
        self.counters["decisions"] += 1
        self.last_footprint = decision.after_tokens
        self.apply(decision, event)

    def snapshot(self, now: float) -> list[ProgramView]:
        runtime = self.runtime
        views = []
        for program in runtime.table.live_programs():
            pid = program.program_id
            if program.operator_paused or pid not in runtime.ledger:
                continue
            views.append(self._view(program, now))
        for pid in self.held.programs():
            if runtime.table.live_program(pid) is None and pid in runtime.ledger:
                views.append(ProgramView(
                    pid, PAUSED, "acting", runtime.ledger.context_tokens(pid), waiting=True,
                    priority=self.priority.get(pid, 0),
                    paused_seconds=now - self.held.first_since(pid),
                    decode_headroom=self.held.headroom(pid), is_new=True))
        return views

    def _update_decay(self, now: float) -> None:
        """``--thunderagent-decay auto``: decay on where the decode steps' fit says their
        batch shares a large part of a step, off where it does not (``policy.batching``)."""
        if self.cfg.decay != "auto":
            return
        shared = self.runtime.decode_meter.value()
        want = decay_wanted(shared, self.config.decay)
        if want == self.config.decay:
            return
        self._reconfigure(now, "decay_switches", decay=want)
        get_logger().info(
            "ThunderAgent scheduler: decay %s: the batch shares %.0f%% of a decode step "
            "(fit over %d steps; decay on from %.0f%%, off below %.0f%%, --thunderagent-decay "
            "auto)", "on" if want else "off", 100 * shared, len(self.runtime.decode_meter.fit),
            100 * ON_FROM, 100 * OFF_BELOW)

    def _reconfigure(self, now: float, counter: str, **changes) -> None:
        """A measured input changed the scheduler's config: counted, and written to the
        decision trace as a new ``config`` record (the replay applies it)."""
        self.config = dataclasses.replace(self.config, **changes)
        self.counters[counter] += 1
        self._trace_config(now)

    def _trace_config(self, now: float) -> None:
        self.runtime.trace.write("config", now, **dataclasses.asdict(self.config),
                                 block=self.runtime.block_size, tick_s=self.cfg.tick_s)

    def observe_loop(self, now: float) -> None:
        """Each scheduler loop: count the time the engine had no call while one waited for
        room (held, its program not paused by an operator). The state is the one at the
        previous loop: an idle scheduler sleeps until a request comes, and the loop after the
        gap already holds that request."""
        if self.admission is None:
            return
        last, was_idle = self._last_loop, self._idle_then
        self._last_loop = now
        self._idle_then = not self.runtime.calls and self._waiting_for_room()
        if last is not None and was_idle:
            self.idle_waiting_s += now - last

    def _waiting_for_room(self) -> bool:
        table = self.runtime.table
        for pid in self.held.programs():
            program = table.live_program(pid)
            if program is None or not program.operator_paused:
                return True
        return False

    def _update_admission(self, now: float) -> None:
        """``--thunderagent-admission feedback``: every period, the controller's factor on the
        pool (``policy.admission``)."""
        if self.admission is None:
            return
        counters = self.runtime.table.counters  # eviction of active programs' KV, not paused ones'
        evicted = counters["missed_evicted_tokens"] - counters["missed_evicted_paused_tokens"]
        if self._period is None:
            self._period = (now, evicted, self.idle_waiting_s)
            return
        start, evicted_then, idle_then = self._period
        if now - start < PERIOD_S:
            return
        self._period = (now, evicted, self.idle_waiting_s)
        seen = Observed(now - start, self.idle_waiting_s - idle_then, evicted - evicted_then,
                        self.runtime.offload.recompute_rate())
        feedback = self.admission.update(seen)
        capacity = max(1, int(self.base_capacity * feedback.factor))
        if capacity == self.config.capacity_tokens:
            return
        self._reconfigure(now, "admission_changes", capacity_tokens=capacity)
        get_logger().info(
            "ThunderAgent scheduler: admission x%.2f (%d tokens): over the last %.1f s the "
            "engine idled with calls held %.0f%% of the time and recomputed evicted KV %.0f%% "
            "(--thunderagent-admission feedback)", feedback.factor, capacity, seen.seconds,
            100 * feedback.idle, 100 * (feedback.recompute or 0.0))

    def _view(self, program, now: float) -> ProgramView:
        pid = program.program_id
        acting = program.phase is Phase.ACTING
        paused = program.status is Status.PAUSED
        return ProgramView(
            pid, program.status.value, program.phase.value,
            self.runtime.ledger.context_tokens(pid),
            tool_seconds=max(0.0, now - program.phase_since) if acting else 0.0,
            waiting=pid in self.held, priority=self.priority.get(pid, 0),
            paused_seconds=max(0.0, now - program.status_since) if paused else 0.0,
            marked=pid in self.marked and not paused,
            decode_headroom=self.runtime.running_headroom(pid) + self.held.headroom(pid),
            attained_s=program.seconds_reasoning + program.unsettled_seconds(now)[0])

    def apply(self, decision, event: str) -> None:
        runtime, log = self.runtime, get_logger()
        for pid in decision.pause:
            program = runtime.table.live_program(pid)
            if program is not None and program.status is Status.ACTIVE:
                runtime.pause(program, decision.reasons.get(pid, event))
        for pid in decision.mark:
            self.marked.add(pid)
            self.counters["marks"] += 1
            log.debug("ThunderAgent scheduler: marked %s (%s)", pid,
                      decision.reasons.get(pid, event))
        for pid in decision.unmark:
            self.marked.discard(pid)
        for pid in decision.resume:
            reason = decision.reasons.get(pid, event)
            if reason.startswith("force-resumed"):
                self.counters["force_resumes"] += 1
            program = runtime.table.live_program(pid)
            if program is None:
                log.debug("ThunderAgent scheduler: admitted new program %s (%s)", pid, reason)
                self.release_held(pid)
            elif program.status is Status.PAUSED:
                runtime.resume(program, reason)

    # ---- SGLang's engine controls ------------------------------------------------------------

    def drain(self, on: bool) -> int:
        """A writer (a weight update) starts (``on``) or stops waiting for SGLang's calls in
        flight. At the first, every held call goes to SGLang, its paused program resumed (an
        operator's pause too): the update would otherwise wait for them forever, as calls
        in flight. Returns how many calls were let go."""
        if not on:
            self.draining = max(0, self.draining - 1)
            return 0
        self.draining += 1
        if self.draining > 1:
            return 0
        count = self.held.count()
        for pid in self.held.programs():
            self.resume_for_drain(pid)  # a paused program's resume lets its calls go
            self.release_held(pid)
        if count:
            get_logger().info("ThunderAgent scheduler: a weight update waits for calls in "
                              "flight: %d held call(s) let go, their programs resumed", count)
        return count

    def resume_for_drain(self, program_id: str) -> None:
        """While draining a call is never held: its paused program is resumed first."""
        program = self.runtime.table.live_program(program_id)
        if program is not None and program.status is Status.PAUSED:
            self.runtime.resume(program, "a weight update waits for calls in flight",
                                operator=program.operator_paused)

    def memory_released(self) -> None:
        self.frozen = True
        get_logger().info("ThunderAgent scheduler: SGLang's memory is released; %d held "
                          "call(s) stay held until it is resumed", self.held.count())

    def memory_resumed(self) -> None:
        """SGLang's memory is back: held calls of active programs go, then a decision."""
        self.frozen = False
        self._release_unpaused(new_too=False)
        self.check("memory resumed")

    def _release_unpaused(self, new_too: bool) -> None:
        """Let go the held calls of active programs (``new_too``: and of programs not
        admitted yet), leaving paused programs' calls held."""
        for pid in self.held.programs():
            program = self.runtime.table.live_program(pid)
            if (program is None and new_too) or (
                    program is not None and program.status is Status.ACTIVE):
                self.release_held(pid)

    # ---- held calls that must end ----------------------------------------------------------

    def release_for_abort(self, rid_prefix: str, abort_all: bool) -> int:
        """Hand held calls an abort names to SGLang, so its own abort answers them."""
        items = self.held.take(lambda item: abort_all or item.rid.startswith(rid_prefix))
        for item in items:
            item.admit(False)
        self.counters["held_aborted"] += len(items)
        self._left_queue(items)
        return len(items)

    def shut_down(self, answer: Callable[[Held], None]) -> int:
        """The server is shutting down: every held call, and any held later, is answered at
        once by ``answer`` (HTTP 503 through SGLang's abort path), so the drain does not wait
        for resumes. Returns how many were held."""
        self.shutdown_answer = answer
        items = self.held.take_all()
        self._answer_at_shutdown(items)
        get_logger().info("ThunderAgent scheduler: shutting down; %d held call(s) answered 503",
                          len(items))
        return len(items)

    def hand_over(self, program_id: str, answer: Callable[[Held], None]) -> int:
        """A router moves the program to another replica: its held calls (never admitted
        here) are answered by ``answer`` (421: send again through the router). Returns how
        many."""
        items = self.held.pop(program_id)
        for item in items:
            answer(item)
        self.counters["held_migrated"] += len(items)
        self._left_queue(items)
        return len(items)

    def _answer_at_shutdown(self, items: list[Held]) -> None:
        for item in items:
            self.shutdown_answer(item)
        self.counters["held_shutdown"] += len(items)
        self._left_queue(items)

    def _left_queue(self, items: list[Held]) -> None:
        """Held calls left without being admitted: a program with none left is not waiting
        (its idle time restarts), and one never admitted leaves nothing behind."""
        for pid in dict.fromkeys(item.program_id for item in items):
            if pid not in self.held:
                self.runtime.table.set_waiting(pid, False)
                self.runtime.forget_unadmitted(pid)

    # ---- reading ---------------------------------------------------------------------------

    def record_fields(self, program_id: str) -> dict:
        program = self.runtime.table.live_program(program_id)
        return {"waiting": self.held.count(program_id), "marked": program_id in self.marked,
                "operator_paused": program is not None and program.operator_paused,
                "priority": self.priority.get(program_id, 0)}

    def listed_footprint(self) -> float:
        """The measure after the last decision, lowered to its bound now: what ended, finished
        or was aborted since (with the decision skipped or not yet due) shows at once, as a
        router places by it. Read, not kept, so no event on the hot path pays for it."""
        return min(self.last_footprint, self._measure_bound())

    def stats(self) -> dict:
        """Counters, and the scheduler's own measure after its last decision (tokens)."""
        cfg = self.config
        return {**self.counters, "held_now": self.held.count(), "marked_now": len(self.marked),
                "enabled": self.enabled, "draining": self.draining > 0, "frozen": self.frozen,
                "footprint_tokens": round(self.listed_footprint(), 1),
                "decay": cfg.decay if cfg else None,
                **self.runtime.decode_meter.stats(),
                "capacity_tokens": cfg.capacity_tokens if cfg else None,
                "admission_factor": (self.admission.factor if self.admission is not None
                                     else None),
                "idle_waiting_s": round(self.idle_waiting_s, 3),
                "high_tokens": cfg.high_tokens if cfg else None,
                "low_tokens": cfg.low_tokens if cfg else None}
