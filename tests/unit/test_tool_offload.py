"""The tool-boundary KV decision and its timed prefetch in ``ProgramRuntime`` (issue 15):
exact decisions, due times and outcomes, with the cache's moves faked (the integration test
``test_offload.py::test_a_long_tool_is_offloaded_...`` runs them on a real server)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

runtime_module = pytest.importorskip("thunderagent_sglang.engine.runtime")
from thunderagent_sglang import config  # noqa: E402
from thunderagent_sglang.engine import program_ipc  # noqa: E402
from thunderagent_sglang.engine.controls import handle  # noqa: E402
from tests.unit.test_runtime import Clock, Engine, arrive, finished, recv  # noqa: E402

OWN = 900  # the program's own device tokens (all movable, all on the host already)


class FakeMoves:
    """The offloader's cache moves: what was asked, and the residency they would leave."""

    def __init__(self, offloader):
        self.evicted, self.loaded = [], []
        offloader._own = lambda pid: (OWN, OWN, 0)
        offloader._evict_own = lambda pid, tokens, decision: self.evicted.append(
            (pid, tokens, decision.value)) or tokens
        offloader._load_back = lambda pid: self.loaded.append(pid) or OWN


def make(**cfg):
    clock = Clock()
    runtime = runtime_module.ProgramRuntime(
        config.ThunderAgentConfig(**{"admission": "feedback", **cfg}), clock=clock)
    # admission by feedback at x1.25: the scheduler admits 1000 tokens into a pool of 800, so
    # the program's 900 tokens contend for the pool
    runtime.scheduler.admission.factor = 1.25
    runtime.scheduler.set_capacity(800)
    runtime.tree = SimpleNamespace(retire=lambda pid: None)
    offload = runtime.offload
    offload.cache = SimpleNamespace(protected_size=lambda: 0)
    offload.link = (1000, 1e9, 1e-3)  # 1 us per token + 1 ms: 900 tokens move in 1.9 ms
    return runtime, clock, FakeMoves(offload), Engine()


def call(runtime, clock, engine, rid, seconds=0.1):
    arrive(runtime, engine, recv(rid, "p", range(OWN)))
    clock.now += seconds
    runtime.on_stream_output(None, None, [finished(rid, range(OWN), range(5000, 5004))], False)


def hint(runtime, event, tool="pytest"):
    reply = handle(runtime, program_ipc.ToolHint(program_id="p", event=event, tool=tool,
                                                 expected_s=None))
    assert reply.status == 200, reply
    return runtime.table.get("p")


def trained(**cfg):
    """A program whose pytest phases took 3 s; now acting again, the tool not named yet."""
    runtime, clock, moves, engine = make(**cfg)
    call(runtime, clock, engine, "r1")
    hint(runtime, "start")
    clock.now += 3.0
    call(runtime, clock, engine, "r2")
    return runtime, clock, moves, engine


def test_an_unknown_tool_keeps_then_naming_a_long_one_offloads_and_times_the_prefetch():
    runtime, clock, moves, engine = trained()
    program = runtime.table.get("p")
    assert (program.tool_predicted_s, program.tool_kv) == (None, "keep")  # gap: no history
    start = program.phase_since
    program = hint(runtime, "start")
    assert (program.tool_predicted_s, program.tool_kv) == (3.0, "offload")
    assert moves.evicted == [("p", OWN, "offload")]
    entry = runtime.offload.prefetches.get("p")
    assert entry.due == pytest.approx(start + 3.0 - 0.0019)
    assert entry.spread_s == 0.5  # p90 - median is 0: one tick
    clock.now = entry.due - 0.01
    runtime.tick()
    assert moves.loaded == []
    clock.now = entry.due
    runtime.tick()
    assert moves.loaded == ["p"] and entry.loaded_at == entry.due
    clock.now += 0.2
    arrive(runtime, engine, recv("r3", "p", range(OWN)))
    stats = runtime.offload.stats()
    assert stats["prefetches"] == {"on_time": 1, "early": 0, "late": 0, "wasted": 0,
                                   "cancelled": 0, "empty": 0}
    # kept at r1's finish, at the first pytest hint (no history) and at r2's finish
    assert stats["tool_decisions"] == {"keep": 3, "offload": 1, "drop": 0}
    assert runtime.table.get("p").tool_kv is None and len(runtime.offload.prefetches) == 0


def test_a_call_before_the_prefetch_is_late_and_a_late_load_is_early():
    runtime, clock, moves, engine = trained()
    hint(runtime, "start")
    clock.now += 1.0
    arrive(runtime, engine, recv("r3", "p", range(OWN)))
    runtime.tick()
    assert moves.loaded == []
    clock.now += 0.1
    runtime.on_stream_output(None, None, [finished("r3", range(OWN), range(5000, 5004))], False)
    hint(runtime, "start")
    clock.now = runtime.offload.prefetches.get("p").due
    runtime.tick()
    clock.now += 0.6  # more than the spread after the load
    arrive(runtime, engine, recv("r4", "p", range(OWN)))
    got = runtime.offload.stats()["prefetches"]
    assert (got["late"], got["early"], got["on_time"]) == (1, 1, 0)


def test_a_tool_end_hint_loads_at_once_and_an_end_or_pause_settles_the_prefetch():
    runtime, clock, moves, engine = trained()
    hint(runtime, "start")
    clock.now += 0.5
    hint(runtime, "end")
    assert moves.loaded == ["p"]
    runtime.pause(runtime.table.get("p"), "test")  # loaded, then paused before its call
    assert runtime.offload.stats()["prefetches"]["wasted"] == 1
    runtime.resume(runtime.table.get("p"), "test")
    runtime.release("p")
    assert len(runtime.offload.prefetches) == 0


def test_a_pause_after_a_boundary_offload_reports_it_and_loads_it_at_resume():
    runtime, clock, moves, engine = trained()
    hint(runtime, "start")
    runtime.offload._own = lambda pid: (0, 0, 0)  # its KV is on the host now
    program = runtime.table.get("p")
    runtime.pause(program, "test")
    assert program.kv_decision == "offload"
    assert runtime.offload.stats()["prefetches"]["cancelled"] == 1
    runtime.resume(program, "test")
    assert moves.loaded == ["p"]


def test_switches_off_keep_the_kv_or_leave_its_load_to_the_call():
    runtime, _, moves, _ = trained(tool_offload=False)
    assert hint(runtime, "start").tool_kv is None and moves.evicted == []
    runtime, clock, moves, _ = trained(prefetch="on-call")
    assert hint(runtime, "start").tool_kv == "offload"
    assert len(runtime.offload.prefetches) == 0
    clock.now += 10
    runtime.tick()
    assert moves.loaded == []


def test_the_queue_yields_due_entries_in_order_and_skips_stale_times():
    from thunderagent_sglang.policy.prefetch import Prefetch, PrefetchQueue
    queue = PrefetchQueue()
    a, b = Prefetch(10), Prefetch(20)
    queue.schedule("a", a, 5.0, 0.5)
    queue.schedule("b", b, 3.0, 0.5)
    queue.schedule("a", a, 8.0, 0.5)  # re-timed: its 5.0 item is stale
    assert list(queue.due_now(6.0)) == [("b", b)]
    b.loaded_at = 3.0
    assert list(queue.due_now(9.0)) == [("a", a)]
    assert queue.end("b", "on_time", "late") is b and queue.end("a", "wasted", "cancelled") is a
    assert queue.end("a", "wasted", "cancelled") is None
    assert queue.outcomes == {"on_time": 1, "early": 0, "late": 0, "wasted": 0,
                              "cancelled": 1, "empty": 0}


def test_a_program_the_pool_holds_with_every_other_keeps_its_kv():
    runtime, clock, moves, engine = make()
    runtime.scheduler.admission.factor = 1.0
    runtime.scheduler.set_capacity(1000)  # the 900 tokens fit: freeing them helps nobody
    call(runtime, clock, engine, "r1")
    hint(runtime, "start")
    clock.now += 3.0
    call(runtime, clock, engine, "r2")
    assert hint(runtime, "start").tool_kv == "keep" and moves.evicted == []
