"""``ProgramRuntime`` without a server: small fakes of SGLang's requests, exact state after each
event (table, ledger, residency, held calls, headroom), as the integration tests only prove
the wiring."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

runtime_module = pytest.importorskip("thunderagent_sglang.engine.runtime")
from thunderagent_sglang import config  # noqa: E402
from thunderagent_sglang.engine import program_ipc  # noqa: E402
from thunderagent_sglang.engine.controls import handle  # noqa: E402
from thunderagent_sglang.program.record import Phase, Status  # noqa: E402


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def make_runtime(capacity=4096, **cfg):
    clock = Clock()
    events = []
    runtime = runtime_module.ProgramRuntime(
        config.ThunderAgentConfig(**cfg), clock=clock,
        notify=lambda pid, event: events.append((pid, event)))
    runtime.scheduler.set_capacity(capacity)
    return runtime, clock, events


def recv(rid, program_id=None, prompt=(), max_new=8):
    """SGLang's TokenizedGenerateReqInput, as far as the hook reads it."""
    custom = {program_ipc.ID_KEY: program_id} if program_id is not None else None
    return SimpleNamespace(rid=rid, input_ids=list(prompt),
                           sampling_params=SimpleNamespace(custom_params=custom,
                                                           max_new_tokens=max_new))


def finished(rid, prompt, output, cached=0):
    """SGLang's Req at its end."""
    return SimpleNamespace(rid=rid, origin_input_ids=list(prompt), output_ids=list(output),
                           cached_tokens=cached, finished=lambda: True)


class Engine:
    """SGLang's handle_generate_request: records what reached it."""

    def __init__(self):
        self.queued = []

    def __call__(self, scheduler, recv_req):
        self.queued.append(recv_req.rid)


def arrive(runtime, engine, req):
    return runtime.on_generate_request(engine, None, req)


def test_an_arrival_and_its_finish_change_every_view_once():
    runtime, clock, _ = make_runtime()
    engine = Engine()
    arrive(runtime, engine, recv("r1", "p", range(40), max_new=8))
    assert engine.queued == ["r1"]
    program = runtime.table.get("p")
    assert (program.status, program.phase, program.in_flight) == (Status.ACTIVE,
                                                                  Phase.REASONING, {"r1"})
    assert runtime.ledger.context_tokens("p") == 40 and runtime.ledger.is_active("p")
    assert runtime.running_headroom("p") == 8 and set(runtime.calls) == {"r1"}
    clock.now += 2
    runtime.on_stream_output(None, None, [finished("r1", range(40), range(100, 105))], False)
    assert (program.phase, program.in_flight, program.steps) == (Phase.ACTING, set(), 1)
    assert program.context_tokens == 45 and runtime.ledger.context_tokens("p") == 44
    assert runtime.calls == {} and runtime.running_headroom("p") == 0
    assert list(program.last_sequence) == [*range(40), *range(100, 104)]


def test_untagged_calls_count_their_prompt_and_output_as_headroom_and_create_no_program():
    runtime, _, _ = make_runtime()
    engine = Engine()
    arrive(runtime, engine, recv("u1", None, range(30), max_new=10))
    assert engine.queued == ["u1"] and len(runtime.table) == 0
    assert runtime.running_headroom(None) == 40
    runtime.on_stream_output(None, None, [finished("u1", range(30), range(3))], False)
    assert runtime.running_headroom(None) == 0 and runtime.calls == {}


def test_pause_and_resume_change_table_ledger_and_scheduler_together():
    runtime, _, events = make_runtime(scheduler="off")  # no decision resumes it meanwhile
    engine = Engine()
    arrive(runtime, engine, recv("r1", "p", range(32)))
    runtime.on_stream_output(None, None, [finished("r1", range(32), range(4))], False)
    program = runtime.table.get("p")
    runtime.scheduler.marked.add("p")
    runtime.pause(program, "test")
    assert program.status is Status.PAUSED and not runtime.ledger.is_active("p")
    assert "p" not in runtime.scheduler.marked and events == [("p", "paused")]
    arrive(runtime, engine, recv("r2", "p", range(40)))
    assert engine.queued == ["r1"] and runtime.scheduler.held.count("p") == 1  # held
    runtime.resume(program, "test")
    assert program.status is Status.ACTIVE and runtime.ledger.is_active("p")
    assert engine.queued == ["r1", "r2"] and runtime.scheduler.held.count() == 0
    assert events == [("p", "paused"), ("p", "prepare"), ("p", "resumed")]


def test_an_operator_pause_holds_until_the_operator_resumes():
    runtime, _, _ = make_runtime()
    engine = Engine()
    arrive(runtime, engine, recv("r1", "op", range(16)))
    runtime.on_stream_output(None, None, [finished("r1", range(16), range(2))], False)
    reply = handle(runtime, program_ipc.PauseProgram(program_id="op"))
    assert (reply.status, reply.body["status"], reply.body["operator_paused"]) == (
        200, "paused", True)
    runtime.scheduler.check("tick")  # the scheduler leaves an operator's pause alone
    assert runtime.table.get("op").status is Status.PAUSED
    reply = handle(runtime, program_ipc.ResumeProgram(program_id="op"))
    assert (reply.body["status"], reply.body["operator_paused"]) == ("active", False)


def test_release_ends_the_program_everywhere_and_releases_its_held_calls():
    runtime, _, events = make_runtime()
    engine = Engine()
    arrive(runtime, engine, recv("r1", "p", range(32)))
    runtime.on_stream_output(None, None, [finished("r1", range(32), range(4))], False)
    runtime.scheduler.priority["p"] = 3
    reply = handle(runtime, program_ipc.ReleaseProgram(program_id="p"))
    assert (reply.status, reply.body["released"], reply.body["status"]) == (
        200, True, "terminated")
    assert "p" not in runtime.ledger and "p" not in runtime.scheduler.priority
    assert events[-1] == ("p", "terminated")


def held_behind_a_reasoning_program(runtime, engine, rid="big-1"):
    """A reasoning program fills the pool, so a new one's call is held."""
    arrive(runtime, engine, recv("a-1", "a", range(240)))
    req = recv(rid, "big", range(1000, 1100))
    arrive(runtime, engine, req)
    return req


def test_aborted_held_calls_of_a_never_admitted_program_leave_nothing_behind():
    runtime, _, _ = make_runtime(capacity=256)
    engine = Engine()
    arrive(runtime, engine, recv("a-1", "a", range(240)))
    req = recv("big-1", "big", range(1000, 1100))
    req.sampling_params.custom_params[program_ipc.PRIORITY_KEY] = 5
    arrive(runtime, engine, req)
    assert runtime.scheduler.held.count("big") == 1 and "big" in runtime.ledger
    assert runtime.scheduler.priority == {"big": 5}
    runtime.on_abort_request(None, SimpleNamespace(rid="big-1", abort_all=False))
    assert engine.queued == ["a-1", "big-1"]  # SGLang's own abort answers it
    assert "big" not in runtime.ledger and runtime.scheduler.priority == {}
    assert runtime.scheduler.held.count() == 0 and runtime.table.live_program("big") is None


def test_held_calls_answered_at_shutdown_leave_nothing_behind():
    runtime, _, _ = make_runtime(capacity=256)
    engine = Engine()
    held_behind_a_reasoning_program(runtime, engine)
    assert runtime.scheduler.held.count("big") == 1
    answered = []
    runtime.scheduler.shut_down(lambda item: answered.append(item.rid))
    assert answered == ["big-1"] and "big" not in runtime.ledger


@pytest.mark.parametrize("expected", [-1.0, float("inf"), float("nan")])
def test_a_tool_hint_with_a_bad_expected_time_is_400(expected):
    runtime, _, _ = make_runtime()
    arrive(runtime, Engine(), recv("r1", "p", range(16)))
    reply = handle(runtime, program_ipc.ToolHint(program_id="p", event="start",
                                                 expected_s=expected))
    assert reply.status == 400 and "expected_s must be a finite number" in reply.body["error"]


def test_unknown_programs_are_404_and_a_failing_operation_is_500_without_a_traceback(
        monkeypatch):
    runtime, _, _ = make_runtime()
    assert handle(runtime, program_ipc.GetProgram(program_id="nope")).status == 404
    assert handle(runtime, program_ipc.ReleaseProgram(program_id="nope")).status == 404

    def broken(program_id):
        raise RuntimeError("/secret/path.py line 3")

    monkeypatch.setattr(runtime.table, "get", broken)
    reply = handle(runtime, program_ipc.GetProgram(program_id="x"))
    assert reply.status == 500
    assert reply.body == {"error": "program operation GetProgram failed (RuntimeError); the "
                                   "server log has details"}


def test_per_program_headroom_is_kept_by_events_not_by_walking_calls():
    runtime, _, _ = make_runtime()
    engine = Engine()
    for i in range(3):
        arrive(runtime, engine, recv(f"a{i}", "a", range(16), max_new=5))
    arrive(runtime, engine, recv("b0", "b", range(16), max_new=7))
    assert (runtime.running_headroom("a"), runtime.running_headroom("b")) == (15, 7)
    runtime.on_abort_output(None, None, None, finished("a1", range(16), []))
    assert runtime.running_headroom("a") == 10
    view = {v.program_id: v for v in runtime.scheduler.snapshot(runtime.clock())}
    assert (view["a"].decode_headroom, view["b"].decode_headroom) == (10, 7)


def test_a_retired_node_ranks_as_retired_until_anything_uses_it_again():
    from thunderagent_sglang.engine.program_tree import ProgramTreeCore

    core = SimpleNamespace(retired={7: 41, 8: 12})
    node = SimpleNamespace(id=7, last_access_time=41)  # untouched since its program ended
    assert ProgramTreeCore.is_retired(core, node) is True
    node.last_access_time = 50  # a match or insert (tagged or not) touched it
    assert ProgramTreeCore.is_retired(core, node) is False
    assert core.retired == {8: 12}  # the mark is gone for good
    assert ProgramTreeCore.is_retired(core, SimpleNamespace(id=9, last_access_time=1)) is False


def test_a_program_whose_first_call_is_held_is_listed_as_waiting():
    runtime, _, _ = make_runtime(capacity=256)
    engine = Engine()
    held_behind_a_reasoning_program(runtime, engine)
    listed = handle(runtime, program_ipc.ListPrograms()).body["programs"]
    assert [p["program_id"] for p in listed] == ["a", "big"]
    assert handle(runtime, program_ipc.GetProgram(program_id="big")).body == {
        "program_id": "big", "status": "waiting", "context_tokens": 100, "waiting": 1,
        "marked": False, "operator_paused": False, "priority": 0}


def test_a_tagged_call_sglang_refuses_for_its_length_is_never_held_and_leaves_no_program():
    runtime, _, _ = make_runtime(capacity=256)
    engine = Engine()
    arrive(runtime, engine, recv("a-1", "a", range(240)))  # would hold any new program
    runtime.on_generate_request(engine, SimpleNamespace(max_req_input_len=300),
                                recv("long-1", "long", range(300)))
    assert engine.queued == ["a-1", "long-1"]  # straight to SGLang, which answers it 400
    assert runtime.table.live_program("long") is None and "long" not in runtime.ledger
    assert runtime.scheduler.held.count() == 0
