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
    recorder = SimpleNamespace(submit=lambda pid, event: events.append((pid, event)) or True)
    runtime = runtime_module.ProgramRuntime(
        config.ThunderAgentConfig(**cfg), clock=clock, events_out=recorder)
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


def fake_tree(**cfg):
    """ProgramTreeCore's tagging on hand-made nodes: root -> a -> (b, c), c -> d."""
    import functools

    from sglang.srt.mem_cache.unified_cache.component_type import ComponentType

    from thunderagent_sglang.engine.program_tree import ProgramTreeCore
    from thunderagent_sglang.policy.residency import Residency

    def node(nid, parent):
        data = {ComponentType.FULL: SimpleNamespace(value=[0] * 16, host_value=None)}
        return SimpleNamespace(id=nid, parent=parent, component_data=data,
                               last_access_time=10 * nid)

    root = SimpleNamespace(id=0, parent=None)
    a = node(1, root)
    b, c = node(2, a), node(3, a)
    nodes = {0: root, 1: a, 2: b, 3: c, 4: node(4, c)}
    core = SimpleNamespace(residency=Residency(), retired={}, root_node=root,
                           node_by_id=nodes.__getitem__,
                           runtime=SimpleNamespace(cfg=config.ThunderAgentConfig(**cfg),
                                                   counted=lambda pid: True))
    for name in ("path_of", "_retire_superseded", "tag_path"):
        setattr(core, name, functools.partial(getattr(ProgramTreeCore, name), core))
    return core


def test_an_eviction_walk_ranks_each_program_once_and_ranks_as_without_the_memo():
    from sglang.srt.mem_cache.unified_cache.component_type import ComponentType

    import functools

    from thunderagent_sglang.engine.program_tree import ProgramEvictionStrategy, ProgramTreeCore
    from thunderagent_sglang.policy.eviction import EvictionClass

    core = fake_tree()
    core.tag_path("p", "last", 2)  # p: a, b
    core.tag_path("q", "last", 4)  # q: a, c, d
    asked = []
    keys = {"p": (EvictionClass.PAUSED, 32.0), "q": (EvictionClass.ACTING, 48.0)}

    def eviction_key(pid):
        asked.append(pid)
        return keys[pid]

    runtime = SimpleNamespace(residency=core.residency, evict_first=None,
                              eviction_key=eviction_key)
    core.is_retired = functools.partial(ProgramTreeCore.is_retired, core)
    base = SimpleNamespace(get_priority=lambda node: node.last_access_time)
    strategy = ProgramEvictionStrategy(base, runtime, core)
    leaves = [core.node_by_id(i) for i in (1, 2, 3, 4)]
    unmemoized = [strategy.get_priority(n) for n in leaves]
    assert unmemoized == [(EvictionClass.ACTING, 48.0, 10), (EvictionClass.PAUSED, 32.0, 20),
                          (EvictionClass.ACTING, 48.0, 30), (EvictionClass.ACTING, 48.0, 40)]
    assert len(asked) == 5  # a (p and q), b, c, d: every tag of every node
    asked.clear()
    strategy.begin_walk()
    assert [strategy.get_priority(n) for n in leaves] == unmemoized
    assert sorted(asked) == ["p", "q"]  # once per program in the walk
    keys["q"] = (EvictionClass.REASONING, 48.0)  # changes between walks are read
    strategy.end_walk()
    asked.clear()
    strategy.begin_walk()
    assert strategy.get_priority(leaves[3]) == (EvictionClass.REASONING, 48.0, 40)
    strategy.end_walk()
    leaves[3].component_data[ComponentType.FULL].value = None  # only on the host now
    assert strategy.get_priority(leaves[3])[:2] == (EvictionClass.REASONING, 0.0)
    ended = SimpleNamespace(id=9, last_access_time=90, component_data=leaves[0].component_data)
    core.retired[9] = 90  # an ended program's node, untagged: first
    assert strategy.get_priority(ended) == (EvictionClass.TERMINATED, 0.0, 90)
    ended.last_access_time = 95  # used again: untagged KV by recency
    assert strategy.get_priority(ended) == (EvictionClass.UNTAGGED, 0.0, 95)


def test_a_branch_a_program_left_is_retired_unless_something_else_tags_it():
    core = fake_tree()
    core.tag_path("p", "last", 2)  # p's history: a, b
    core.tag_path("q", "last", 2)  # q shares it
    core.tag_path("p", "last", 3)  # p re-rendered: a, c; b is still q's
    assert core.retired == {}
    core.tag_path("q", "last", 1)  # q's latest ends at a: b is nobody's now
    assert core.retired == {2: 20}
    core.tag_path("p", "last", 4)  # appended to c: nothing left behind
    core.tag_path("p", "r9", 2)  # a running call's head moving is not a finished sequence
    core.tag_path("p", "r9", 1)
    assert core.retired == {2: 20}


def test_superseded_states_stay_untagged_kv_with_the_switch_off():
    core = fake_tree(superseded_first=False)
    core.tag_path("p", "last", 2)
    core.tag_path("p", "last", 3)
    assert core.retired == {} and not core.residency.is_tagged(2)


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


def acting_program(runtime, engine, pid="p", rid="r1"):
    arrive(runtime, engine, recv(rid, pid, range(32)))
    runtime.on_stream_output(None, None, [finished(rid, range(32), range(4))], False)
    return runtime.table.get(pid)


def test_a_paused_program_whose_agent_is_gone_expires_and_leaves_nothing_behind():
    runtime, clock, events = make_runtime(scheduler="off", idle_expiry_s=60.0)
    engine = Engine()
    program = acting_program(runtime, engine)
    runtime.scheduler.priority["p"] = 2
    runtime.pause(program, "test")
    clock.now += 60.5
    runtime.tick()
    assert (program.status, program.release_cause) == (Status.TERMINATED, "idle")
    assert "p" not in runtime.ledger and "p" not in runtime.scheduler.priority
    assert events[-1] == ("p", "terminated")


def test_a_paused_program_with_a_held_call_does_not_expire_until_the_call_leaves():
    runtime, clock, _ = make_runtime(scheduler="off", idle_expiry_s=60.0)
    engine = Engine()
    program = acting_program(runtime, engine)
    runtime.pause(program, "test")
    clock.now += 50
    arrive(runtime, engine, recv("r2", "p", range(40)))
    assert runtime.scheduler.held.count("p") == 1 and program.waiting
    clock.now += 500
    runtime.tick()
    assert program.status is Status.PAUSED
    runtime.on_abort_request(None, SimpleNamespace(rid="r2", abort_all=False))
    assert engine.queued == ["r1", "r2"] and not program.waiting  # SGLang's abort answers it
    clock.now += 59
    runtime.tick()
    assert program.status is Status.PAUSED
    clock.now += 2
    runtime.tick()
    assert program.release_cause == "idle"


def test_an_operator_paused_program_never_expires():
    runtime, clock, _ = make_runtime(idle_expiry_s=60.0)
    engine = Engine()
    acting_program(runtime, engine, "op")
    handle(runtime, program_ipc.PauseProgram(program_id="op"))
    clock.now += 10_000
    runtime.tick()
    program = runtime.table.get("op")
    assert (program.status, program.operator_paused) == (Status.PAUSED, True)
    handle(runtime, program_ipc.ResumeProgram(program_id="op"))
    clock.now += 61
    runtime.tick()
    assert program.release_cause == "idle"


class Aborts:
    """SGLang's Scheduler.abort_request: records the rid and the status it answers with."""

    def __init__(self):
        self.answered = []

    def abort_request(self, req):
        self.answered.append((req.rid, req.finished_reason["status_code"]))


def test_beyond_max_held_a_call_that_would_be_held_is_answered_429_and_leaves_nothing():
    runtime, _, _ = make_runtime(capacity=256, max_held=2)
    runtime.sglang = Aborts()
    engine = Engine()
    arrive(runtime, engine, recv("a-1", "a", range(240)))  # fills the pool: new programs wait
    for n in (1, 2):
        arrive(runtime, engine, recv(f"w{n}-1", f"w{n}", range(1000 * n, 1000 * n + 100)))
    assert runtime.scheduler.held.count() == 2 and runtime.sglang.answered == []
    req = recv("w3-1", "w3", range(3000, 3100))
    req.sampling_params.custom_params[program_ipc.PRIORITY_KEY] = 4
    arrive(runtime, engine, req)
    assert runtime.sglang.answered == [("w3-1", 429)] and engine.queued == ["a-1", "w3-1"]
    assert "w3" not in runtime.ledger and "w3" not in runtime.scheduler.priority
    assert runtime.table.live_program("w3") is None and runtime.scheduler.held.count() == 2
    assert runtime.scheduler.stats()["held_refused"] == 1
    arrive(runtime, engine, recv("u-1", None, range(10)))  # untagged: never held, never refused
    arrive(runtime, engine, recv("a-2", "a", range(240)))  # an active program's call goes in
    assert engine.queued == ["a-1", "w3-1", "u-1", "a-2"]
    assert runtime.scheduler.stats()["held_refused"] == 1


def test_a_paused_programs_refused_call_leaves_its_context_as_it_was():
    runtime, _, _ = make_runtime(scheduler="off", max_held=1)
    runtime.sglang = Aborts()
    engine = Engine()
    for pid in ("p", "q"):
        program = acting_program(runtime, engine, pid, rid=pid + "-1")
        runtime.pause(program, "test")
    arrive(runtime, engine, recv("p-2", "p", range(50)))  # held: the bound is reached
    before = runtime.ledger.context_tokens("q")
    arrive(runtime, engine, recv("q-2", "q", range(80)))
    assert runtime.sglang.answered == [("q-2", 429)]
    assert runtime.ledger.context_tokens("q") == before and not runtime.table.get("q").waiting


def test_a_new_program_that_fits_is_admitted_even_when_the_held_queue_is_full():
    runtime, _, _ = make_runtime(max_held=1)
    runtime.sglang = Aborts()
    engine = Engine()
    acting_program(runtime, engine, "op", rid="op-1")
    handle(runtime, program_ipc.PauseProgram(program_id="op"))
    arrive(runtime, engine, recv("op-2", "op", range(40)))  # held until the operator resumes
    assert runtime.scheduler.full()
    arrive(runtime, engine, recv("n-1", "n", range(20)))
    assert engine.queued == ["op-1", "n-1"] and runtime.sglang.answered == []
    assert runtime.table.get("n").in_flight == {"n-1"}
    assert runtime.scheduler.stats()["held_refused"] == 0


def test_a_weight_update_lets_every_held_call_go_and_nothing_is_held_until_it_is_done():
    runtime, _, _ = make_runtime(capacity=256)
    engine = Engine()
    acting = acting_program(runtime, engine, "op", rid="op-1")
    handle(runtime, program_ipc.PauseProgram(program_id="op"))
    held_behind_a_reasoning_program(runtime, engine)  # "big" new, its call held
    arrive(runtime, engine, recv("op-2", "op", range(40)))
    assert runtime.scheduler.held.count() == 2
    reply = handle(runtime, program_ipc.DrainHeld(on=True))
    assert reply.body == {"released": 2, "draining": 1}
    assert engine.queued == ["op-1", "a-1", "big-1", "op-2"] and runtime.scheduler.held.count() == 0
    assert (acting.status, acting.operator_paused) == (Status.ACTIVE, False)
    runtime.pause(acting, "test")  # a paused program's call while draining: resumed, not held
    arrive(runtime, engine, recv("op-3", "op", range(44)))
    arrive(runtime, engine, recv("new-1", "new", range(2000, 2100)))
    assert engine.queued[-2:] == ["op-3", "new-1"] and acting.status is Status.ACTIVE
    assert handle(runtime, program_ipc.DrainHeld(on=False)).body == {"released": 0,
                                                                    "draining": 0}
    arrive(runtime, engine, recv("late-1", "late", range(3000, 3100)))  # held again
    assert runtime.scheduler.held.count("late") == 1


def test_while_sglangs_memory_is_released_held_calls_stay_held():
    runtime, _, _ = make_runtime(scheduler="off")
    engine = Engine()
    program = acting_program(runtime, engine)
    runtime.pause(program, "test")
    arrive(runtime, engine, recv("r2", "p", range(40)))
    runtime.on_memory_released(None, SimpleNamespace(offload_tags={"kv_cache"}), None)
    runtime.resume(program, "operator", operator=True)
    assert program.status is Status.ACTIVE and runtime.scheduler.held.count("p") == 1
    updater = SimpleNamespace(offload_tags={"weights"})
    runtime.on_memory_resumed(None, updater, None)  # the KV is back, the weights not yet
    assert runtime.scheduler.held.count("p") == 1 and engine.queued == ["r1"]
    updater.offload_tags.clear()
    runtime.on_memory_resumed(None, updater, None)
    assert engine.queued == ["r1", "r2"] and runtime.scheduler.held.count() == 0
    assert runtime.scheduler.stats()["frozen"] is False


def test_a_held_prompt_is_hashed_once_not_again_at_admission(monkeypatch):
    runtime, _, _ = make_runtime(scheduler="off")
    engine = Engine()
    program = acting_program(runtime, engine)
    runtime.pause(program, "test")
    hashed = []
    real = runtime_module.block_keys
    monkeypatch.setattr(runtime_module, "block_keys",
                        lambda tokens, *a, **kw: hashed.append(len(tokens)) or real(tokens, *a, **kw))
    arrive(runtime, engine, recv("r2", "p", range(40)))
    held_chain = runtime.ledger.chain_of("p")
    runtime.resume(program, "test")
    assert engine.queued == ["r1", "r2"] and hashed == [40]
    assert runtime.calls["r2"].chain is held_chain and runtime.ledger.is_active("p")


def test_eviction_and_scheduling_read_one_context_size():
    from thunderagent_sglang.policy.eviction import ProgramState, program_key

    runtime, _, _ = make_runtime()
    engine = Engine()
    acting_program(runtime, engine)  # finished: 32 prompt + 4 output, 35 with KV
    assert runtime.eviction_key("p") == program_key(
        ProgramState(paused=False, reasoning=False, context_tokens=35, tool_seconds=0.0), 5.0)
    arrive(runtime, engine, recv("r2", "p", range(400)))  # the current prompt, not the last call
    assert runtime.ledger.context_tokens("p") == 400
    assert runtime.eviction_key("p") == program_key(
        ProgramState(paused=False, reasoning=True, context_tokens=400, tool_seconds=0.0), 5.0)


def recording_answers(runtime):
    answered = []
    runtime.answer_now = lambda admit, rid, status, message: answered.append((rid, status))
    return answered


def test_migrating_a_paused_program_hands_its_held_call_back_and_ends_it_here():
    runtime, clock, events = make_runtime()
    engine = Engine()
    answered = recording_answers(runtime)
    arrive(runtime, engine, recv("r1", "p", range(32)))
    runtime.on_stream_output(None, None, [finished("r1", range(32), range(4))], False)
    handle(runtime, program_ipc.PauseProgram(program_id="p"))
    arrive(runtime, engine, recv("r2", "p", range(40)))
    assert runtime.scheduler.held.count("p") == 1 and engine.queued == ["r1"]
    reply = handle(runtime, program_ipc.MigrateProgram(program_id="p"))
    assert (reply.status, reply.body["status"], reply.body["release_cause"],
            reply.body["handed_over"]) == (200, "terminated", "migrated", 1)
    assert answered == [("r2", 421)] and engine.queued == ["r1"]
    assert runtime.scheduler.held.count() == 0 and "p" not in runtime.ledger
    assert runtime.table.counters["releases"]["migrated"] == 1
    assert runtime.scheduler.counters["held_migrated"] == 1
    assert events[-1] == ("p", "terminated")
    listed = handle(runtime, program_ipc.ListPrograms(live_only=True)).body["programs"]
    assert listed == []
    assert [p["program_id"] for p in
            handle(runtime, program_ipc.ListPrograms()).body["programs"]] == ["p"]


def test_a_program_with_a_call_running_cannot_migrate_and_is_left_as_it_was():
    runtime, _, _ = make_runtime()
    engine = Engine()
    answered = recording_answers(runtime)
    arrive(runtime, engine, recv("r1", "p", range(32)))
    reply = handle(runtime, program_ipc.MigrateProgram(program_id="p"))
    assert reply.status == 409 and "1 call(s) running" in reply.body["error"]
    program = runtime.table.get("p")
    assert (program.status, program.in_flight, answered) == (Status.ACTIVE, {"r1"}, [])
    reply = handle(runtime, program_ipc.MigrateProgram(program_id="nobody"))
    assert reply.status == 404


def test_migrating_a_never_admitted_program_leaves_nothing_behind():
    runtime, _, _ = make_runtime(capacity=256)
    engine = Engine()
    answered = recording_answers(runtime)
    held_behind_a_reasoning_program(runtime, engine)
    reply = handle(runtime, program_ipc.MigrateProgram(program_id="big"))
    assert (reply.status, reply.body) == (200, {"program_id": "big", "status": "terminated",
                                                "release_cause": "migrated", "handed_over": 1})
    assert answered == [("big-1", 421)] and "big" not in runtime.ledger
    assert runtime.table.live_program("big") is None and runtime.scheduler.held.count() == 0


def test_the_listed_measure_drops_to_zero_once_no_tagged_program_is_live():
    runtime, _, _ = make_runtime()
    engine = Engine()
    arrive(runtime, engine, recv("r1", "p", range(64), max_new=16))
    assert runtime.scheduler.stats()["footprint_tokens"] == 64 + 16
    runtime.on_stream_output(None, None, [finished("r1", range(64), range(4))], False)
    before = dict(runtime.scheduler.counters)
    handle(runtime, program_ipc.ReleaseProgram(program_id="p"))  # no tick: shown at once
    listed = handle(runtime, program_ipc.ListPrograms()).body["scheduler"]
    assert listed["footprint_tokens"] == 0
    assert (listed["checks_skipped"] - before["checks_skipped"],
            listed["decisions"] - before["decisions"]) == (1, 0)


def test_a_release_resumes_a_paused_program_at_once_not_at_the_next_tick():
    runtime, _, _ = make_runtime(capacity=1000)  # high 950, low 850
    engine = Engine()
    for rid, pid, prompt in (("r1", "a", 300), ("r2", "b", 600), ("r3", "b", 660)):
        tokens = range(1000 * (ord(pid) - ord("a")), 1000 * (ord(pid) - ord("a")) + prompt)
        arrive(runtime, engine, recv(rid, pid, tokens, max_new=4))
        runtime.on_stream_output(None, None, [finished(rid, tokens, range(4))], False)
    assert runtime.table.get("a").status is Status.PAUSED  # b grew past high
    decisions = runtime.scheduler.counters["decisions"]
    handle(runtime, program_ipc.ReleaseProgram(program_id="b"))
    assert runtime.table.get("a").status is Status.ACTIVE
    assert runtime.scheduler.counters["decisions"] == decisions + 1
    assert runtime.scheduler.stats()["footprint_tokens"] == 303  # a: what has KV


def test_a_programs_view_carries_its_attained_service():
    runtime, clock, _ = make_runtime()
    engine = Engine()
    arrive(runtime, engine, recv("r1", "p", range(32)))
    clock.now += 2
    runtime.on_stream_output(None, None, [finished("r1", range(32), range(4))], False)
    clock.now += 3  # acting: not service
    arrive(runtime, engine, recv("r2", "p", range(40)))
    clock.now += 0.5
    [view] = runtime.scheduler.snapshot(clock.now)
    assert view.attained_s == 2.5


def acting_beside_a_held_program():
    """Admission by feedback on a 256-token pool: a acts, big's call is held for room."""
    runtime, clock, _ = make_runtime(capacity=256, admission="feedback", recompute_rate=1000.0,
                                     decay="off")
    engine = Engine()
    arrive(runtime, engine, recv("a-1", "a", range(200)))
    arrive(runtime, engine, recv("big-1", "big", range(1000, 1100)))
    runtime.on_stream_output(None, None, [finished("a-1", range(200), range(4))], False)
    return runtime, clock, engine


def test_admission_by_feedback_admits_more_while_the_engine_idles_with_calls_held():
    runtime, clock, engine = acting_beside_a_held_program()
    # a acts (204 tokens, under the high watermark 243), big waits: 304 is over it
    assert engine.queued == ["a-1"] and runtime.calls == {}
    factors = []
    for _ in range(60):  # 30 s of loop ticks, 0.5 s apart
        clock.now += 0.5
        runtime.tick()
        factors.append(runtime.scheduler.admission.factor)
        if "big-1" in engine.queued:
            break
    # +0.2 per 5 s idle period: at x1.4 the pool is 358 tokens, low watermark 304.6 >= 204 + 100
    assert factors[-1] == 1.4 and factors.count(1.2) == 10 and engine.queued == ["a-1", "big-1"]
    stats = runtime.scheduler.stats()
    assert (stats["admission_changes"], stats["capacity_tokens"]) == (2, 358)


def test_fixed_admission_and_an_operators_pause_never_raise_the_pool():
    runtime, clock, _ = make_runtime(capacity=256)
    assert runtime.scheduler.admission is None
    runtime, clock, _ = make_runtime(capacity=256, admission="feedback", recompute_rate=1000.0)
    engine = Engine()
    arrive(runtime, engine, recv("r1", "op", range(32)))
    runtime.on_stream_output(None, None, [finished("r1", range(32), range(4))], False)
    handle(runtime, program_ipc.PauseProgram(program_id="op"))
    arrive(runtime, engine, recv("r2", "op", range(40)))  # held until an operator resumes it
    for _ in range(30):
        clock.now += 0.5
        runtime.tick()
    assert runtime.scheduler.held.count() == 1 and runtime.scheduler.admission.factor == 1.0


def test_an_idle_gap_counts_by_the_state_at_its_start():
    """An idle scheduler sleeps until a request comes: the loop after the gap already holds
    the call that ended it, yet the engine had none during it."""
    runtime, clock, engine = acting_beside_a_held_program()
    runtime.tick()  # idle, big held
    clock.now += 3.0
    arrive(runtime, engine, recv("a-2", "a", range(210)))  # wakes the loop with a call in it
    runtime.tick()
    clock.now += 1.0
    runtime.tick()  # a call ran over this second
    assert runtime.scheduler.stats()["idle_waiting_s"] == 3.0


@pytest.mark.parametrize("held_before, admitted", [(None, []), (250.0, ["big-1"])])
def test_a_call_a_router_held_before_counts_that_wait_toward_max_pause(held_before, admitted):
    runtime, clock, _ = make_runtime(capacity=256, max_pause_s=300.0)
    engine = Engine()
    arrive(runtime, engine, recv("a-1", "a", range(240)))
    req = recv("big-1", "big", range(1000, 1100))
    if held_before is not None:
        req.sampling_params.custom_params[program_ipc.HELD_KEY] = held_before
    arrive(runtime, engine, req)
    assert engine.queued == ["a-1"] and req.sampling_params.custom_params is None
    assert runtime.scheduler.held.first_since("big") == 100.0 - (held_before or 0.0)
    clock.now += 60  # 310 s held in all with the router's wait; 60 s here
    runtime.tick()
    assert engine.queued == ["a-1", *admitted]


def test_a_call_skips_the_decision_only_when_it_could_change_nothing():
    """The decision at a tagged call's arrival and after its finish reads every live program:
    it is skipped (O(1)) while nothing is marked, held or paused and all counted demand plus
    every running call's headroom stays at or below high; otherwise it runs."""
    runtime, clock, _ = make_runtime(capacity=1000)  # high 950, low 850
    scheduler, engine = runtime.scheduler, Engine()

    def call(rid, pid, prompt, mark=False):
        """(skipped, decided) over this call's arrival and finish; programs' tokens distinct."""
        tokens = range(1000 * (ord(pid) - ord("a")), 1000 * (ord(pid) - ord("a")) + prompt)
        before = dict(scheduler.counters)
        arrive(runtime, engine, recv(rid, pid, tokens, max_new=4))
        if mark:
            scheduler.marked.add(pid)
        runtime.on_stream_output(None, None, [finished(rid, tokens, range(4))], False)
        return tuple(scheduler.counters[k] - before[k] for k in ("checks_skipped", "decisions"))

    # a new program's call is held, then decided (admitted); after it nothing to decide
    assert call("r1", "a", 300) == (1, 1)
    # a's next call arrives with nothing to decide; marked while it runs, its finish is
    # decided (the mark is cleared, the pool being under low)
    assert call("r2", "a", 304, mark=True) == (1, 1)
    assert not scheduler.marked and runtime.table.get("a").status is Status.ACTIVE
    assert call("r3", "b", 600) == (1, 1)  # 307 + 603 = 910 <= 950 after its finish
    # b grows to 660: 307 + 660 + 4 of headroom > 950 at its arrival: the smallest acting
    # program pauses; with a paused, its finish is decided too
    assert call("r4", "b", 660) == (0, 2)
    assert runtime.table.get("a").status is Status.PAUSED
    assert runtime.ledger.demand_tokens() == 663


def test_whenever_a_check_is_skipped_the_decision_would_have_been_empty():
    """Seeded random programs growing, finishing, ending and ticking on a small pool: at every
    point where a check would be skipped, the full decision on the same state does nothing."""
    import random

    from thunderagent_sglang.policy.footprint import ledger_footprint
    from thunderagent_sglang.policy.scheduling import decide

    rng = random.Random(7)
    runtime, clock, _ = make_runtime(capacity=2000)
    scheduler, engine = runtime.scheduler, Engine()
    sizes, skipped_states = {}, 0

    def empty_if_skipped() -> int:
        if not scheduler._nothing_to_decide():
            return 0
        views = scheduler.snapshot(clock.now)
        decision = decide(views, scheduler.config, ledger_footprint(runtime.ledger),
                          untagged_tokens=runtime.running_headroom(None))
        assert not (decision.pause or decision.mark or decision.unmark or decision.resume)
        return 1

    for step in range(300):
        pid = f"p{rng.randrange(6)}"
        program = runtime.table.live_program(pid)
        if program is not None and rng.random() < 0.15:  # it ends; a new one takes its id
            handle(runtime, program_ipc.ReleaseProgram(program_id=pid))
            sizes.pop(pid, None)
            continue
        if program is not None and (program.in_flight or program.status is Status.PAUSED):
            clock.now += 0.3
            runtime.tick()
            continue
        sizes[pid] = sizes.get(pid, rng.randrange(50, 300)) + rng.randrange(0, 120)
        tokens = range(10_000 * int(pid[1:]), 10_000 * int(pid[1:]) + sizes[pid])
        rid = f"r{step}"
        arrive(runtime, engine, recv(rid, pid, tokens, max_new=4))
        skipped_states += empty_if_skipped()  # its call running
        if rid in engine.queued:  # admitted (not held): it runs and finishes
            runtime.on_stream_output(None, None, [finished(rid, tokens, range(4))], False)
        skipped_states += empty_if_skipped()
        clock.now += rng.choice((0.05, 0.3, 1.0))
    counters = scheduler.counters
    assert skipped_states >= 40 and counters["decisions"] > 20 and counters["held_requests"] > 0
