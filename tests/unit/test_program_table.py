"""The program table: phases, release, incarnations, idle expiry, accounting (fake clock)."""

from __future__ import annotations

import pytest

from thunderagent_sglang.program.table import (
    RECORD_KEYS,
    Phase,
    ProgramTable,
    Status,
    UnknownProgram,
)


class FakeClock:
    def __init__(self, start: float = 1000.0):
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def table(clock):
    return ProgramTable(idle_expiry_s=60.0, max_terminated=100, clock=clock)


def finish(table, rid, prompt=100, cached=0, output=10):
    return table.on_finish(rid, prompt_tokens=prompt, cached_tokens=cached, output_tokens=output)


def times(table, pid):
    rec = table.record(table.get(pid))
    return rec["seconds_reasoning"], rec["seconds_acting"], rec["seconds_paused"]


# ---- phases -------------------------------------------------------------------------------

def test_arrival_creates_a_reasoning_program(table, clock):
    p = table.on_arrival("a", "r1", parent_id="root")
    assert (p.program_id, p.incarnation, p.parent_id) == ("a", 1, "root")
    assert (p.status, p.phase, p.in_flight) == (Status.ACTIVE, Phase.REASONING, {"r1"})
    assert p.created_at == p.phase_since == clock.now
    assert p.steps == 0 and not p.release_requested and p.release_cause is None


def test_finish_turns_acting_and_next_arrival_reasoning(table, clock):
    table.on_arrival("a", "r1")
    clock.advance(2)
    p = finish(table, "r1")
    assert (p.phase, p.in_flight, p.phase_since) == (Phase.ACTING, set(), 1002.0)
    clock.advance(3)
    p = table.on_arrival("a", "r2")
    assert (p.phase, p.in_flight, p.phase_since) == (Phase.REASONING, {"r2"}, 1005.0)
    assert table.get("a") is p and p.incarnation == 1


def test_fork_stays_reasoning_until_last_finishes(table, clock):
    table.on_arrival("a", "r1")
    table.on_arrival("a", "r2")
    assert table.get("a").in_flight == {"r1", "r2"}
    clock.advance(1)
    p = finish(table, "r1")
    assert (p.phase, p.in_flight, p.steps) == (Phase.REASONING, {"r2"}, 1)
    clock.advance(1)
    p = finish(table, "r2")
    assert (p.phase, p.in_flight, p.steps, p.phase_since) == (Phase.ACTING, set(), 2, 1002.0)
    assert times(table, "a") == (2.0, 0.0, 0.0)


def test_duplicate_in_flight_rid_is_an_error(table):
    table.on_arrival("a", "r1")
    with pytest.raises(ValueError, match="'r1' is already in flight"):
        table.on_arrival("a", "r1")
    with pytest.raises(ValueError, match="already in flight"):
        table.on_arrival("b", "r1")
    assert table.get("a").in_flight == {"r1"}
    with pytest.raises(UnknownProgram):
        table.get("b")


def test_rid_can_be_reused_after_it_finished(table):
    table.on_arrival("a", "r1")
    finish(table, "r1")
    assert table.on_arrival("a", "r1").in_flight == {"r1"}


def test_finish_of_unknown_rid_is_none(table):
    assert finish(table, "untagged") is None
    table.on_arrival("a", "r1")
    finish(table, "r1")
    assert finish(table, "r1") is None  # finished twice: already forgotten
    assert table.get("a").steps == 1


# ---- accounting ---------------------------------------------------------------------------

def test_finish_accounting(table):
    table.on_arrival("a", "r1")
    p = finish(table, "r1", prompt=100, cached=30, output=20)
    assert (p.steps, p.prefill_tokens_computed, p.prefill_tokens_cached, p.decode_tokens,
            p.context_tokens) == (1, 70, 30, 20, 120)
    table.on_arrival("a", "r2")
    p = finish(table, "r2", prompt=150, cached=120, output=5)
    assert (p.steps, p.prefill_tokens_computed, p.prefill_tokens_cached, p.decode_tokens,
            p.context_tokens) == (2, 100, 150, 25, 155)


def test_time_accounting_per_phase_and_status(table, clock):
    table.on_arrival("a", "r1")
    clock.advance(2)                       # reasoning 2
    assert times(table, "a") == (2.0, 0.0, 0.0)
    finish(table, "r1")
    clock.advance(3)                       # acting 3
    assert times(table, "a") == (2.0, 3.0, 0.0)
    table.pause("a")
    clock.advance(4)                       # paused 4 (acting)
    assert times(table, "a") == (2.0, 3.0, 4.0)
    table.on_arrival("a", "r2")            # arrives while paused: phase changes, still paused
    p = table.get("a")
    assert (p.status, p.phase) == (Status.PAUSED, Phase.REASONING)
    clock.advance(1)                       # paused 1 (reasoning)
    assert times(table, "a") == (2.0, 3.0, 5.0)
    table.resume("a")
    clock.advance(0.5)                     # reasoning 0.5
    finish(table, "r2")
    clock.advance(1.25)                    # acting 1.25
    assert times(table, "a") == (2.5, 4.25, 5.0)
    # settled fields stop at the last transition; the record adds the current stretch
    p = table.get("a")
    assert (p.seconds_reasoning, p.seconds_acting, p.seconds_paused) == (2.5, 3.0, 5.0)
    table.release("a")
    clock.advance(100)                     # terminated: nothing accrues
    assert times(table, "a") == (2.5, 4.25, 5.0)
    assert table.get("a").terminated_at == 1000.0 + 2 + 3 + 4 + 1 + 0.5 + 1.25


def test_record_rounds_to_milliseconds(table, clock):
    table.on_arrival("a", "r1")
    clock.advance(1.23456)
    assert table.record(table.get("a"))["seconds_reasoning"] == 1.235


def test_record_keys_exactly(table, clock):
    table.on_arrival("a", "r1", parent_id="p")
    clock.advance(1)
    finish(table, "r1", prompt=10, cached=4, output=3)
    clock.advance(2)
    table.tool_event("a", "start", expected_s=5.0)
    table.set_tool_kv("a", "offload")
    rec = table.record(table.get("a"))
    assert tuple(rec) == RECORD_KEYS
    assert set(rec) == {
        "program_id", "incarnation", "parent_id", "status", "phase", "context_tokens", "steps",
        "prefill_tokens_computed", "prefill_tokens_cached", "missed_evicted_tokens",
        "missed_changed_tokens", "decode_tokens", "seconds_reasoning",
        "seconds_acting", "seconds_paused", "in_flight", "tool_running", "tool",
        "tool_expected_s", "tool_predicted_s", "tool_predicted_p90_s", "release_cause",
        "kv_decision", "tool_kv", "environments"}
    assert rec == {
        "program_id": "a", "incarnation": 1, "parent_id": "p", "status": "active",
        "phase": "acting", "context_tokens": 13, "steps": 1, "prefill_tokens_computed": 6,
        "prefill_tokens_cached": 4, "missed_evicted_tokens": 0, "missed_changed_tokens": 0,
        "decode_tokens": 3, "seconds_reasoning": 1.0,
        "seconds_acting": 2.0, "seconds_paused": 0.0, "in_flight": 0, "tool_running": True,
        "tool": None, "tool_expected_s": 5.0, "tool_predicted_s": None,
        "tool_predicted_p90_s": None, "release_cause": None, "kv_decision": None,
        "tool_kv": "offload", "environments": None}
    assert type(rec["status"]) is str and type(rec["phase"]) is str


def test_the_tool_boundary_kv_choice_lasts_its_acting_phase(table, clock):
    table.on_arrival("a", "r1")
    finish(table, "r1")
    table.set_tool_kv("a", "drop")
    table.tool_event("a", "start", tool="pytest")
    assert table.get("a").tool_kv == "drop"
    table.on_arrival("a", "r2")
    assert table.get("a").tool_kv is None
    finish(table, "r2")
    assert table.get("a").tool_kv is None


# ---- release ------------------------------------------------------------------------------

def test_release_with_nothing_in_flight_terminates_at_once(table, clock):
    table.on_arrival("a", "r1")
    finish(table, "r1")
    clock.advance(5)
    p = table.release("a")
    assert (p.status, p.release_cause, p.terminated_at) == (Status.TERMINATED, "explicit", 1005.0)
    assert table.get("a") is p
    assert table.counters["releases"] == {"explicit": 1, "final": 0, "idle": 0, "migrated": 0}
    assert table.live_count_by() == {"status": {"active": 0, "paused": 0},
                                      "phase": {"reasoning": 0, "acting": 0}}


def test_release_with_in_flight_waits_for_the_last_finish(table, clock):
    table.on_arrival("a", "r1")
    table.on_arrival("a", "r2")
    p = table.release("a")
    assert (p.status, p.release_requested, p.release_cause) == (Status.ACTIVE, True, None)
    assert table.release("a") is p  # idempotent while pending
    finish(table, "r1")
    assert p.status is Status.ACTIVE
    table.on_arrival("a", "r3")  # still live: a late call joins and delays termination
    finish(table, "r2")
    assert p.status is Status.ACTIVE
    clock.advance(1)
    finish(table, "r3")
    assert (p.status, p.release_cause, p.terminated_at, p.steps) == (Status.TERMINATED, "explicit", 1001.0, 3)
    assert table.record(p)["release_cause"] == "explicit"
    assert table.counters["releases"]["explicit"] == 1


def test_final_marker_terminates_after_its_calls(table):
    table.on_arrival("a", "r1")
    finish(table, "r1")
    p = table.on_arrival("a", "r2", final=True)
    assert (p.release_requested, p.status) == (True, Status.ACTIVE)
    table.release("a")  # an explicit release after the final marker keeps cause "final"
    finish(table, "r2")
    assert (p.status, p.release_cause) == (Status.TERMINATED, "final")
    assert table.counters["releases"] == {"explicit": 0, "final": 1, "idle": 0, "migrated": 0}


def test_release_of_unknown_or_terminated_id(table):
    with pytest.raises(UnknownProgram, match="unknown program id 'x'") as err:
        table.release("x")
    assert isinstance(err.value, KeyError) and str(err.value) == "unknown program id 'x'"
    table.on_arrival("a", "r1")
    finish(table, "r1")
    table.release("a")
    with pytest.raises(UnknownProgram):
        table.release("a")
    for call in (lambda: table.pause("a"), lambda: table.resume("a"),
                 lambda: table.tool_event("a", "start"), lambda: table.get("zz")):
        with pytest.raises(UnknownProgram):
            call()
    assert table.get("a").status is Status.TERMINATED  # get still sees the kept record


# ---- incarnations and bounded memory ------------------------------------------------------

def test_reused_id_starts_a_new_incarnation(table, clock):
    table.on_arrival("a", "r1", parent_id="p1")
    finish(table, "r1", prompt=50, output=5)
    old = table.release("a")
    clock.advance(1)
    new = table.on_arrival("a", "r2")
    assert new is not old
    assert (new.incarnation, new.steps, new.context_tokens, new.parent_id, new.status) == (
        2, 0, 0, None, Status.ACTIVE)
    assert table.get("a") is new
    assert table.programs() == [new, old]
    finish(table, "r2")
    table.release("a")
    assert table.on_arrival("a", "r3").incarnation == 3
    assert [(p.incarnation, p.status) for p in table.programs()] == [
        (3, Status.ACTIVE), (1, Status.TERMINATED), (2, Status.TERMINATED)]
    assert table.counters["programs_created"] == 3


def test_programs_lists_live_in_creation_order_then_terminated(table):
    for pid in "abc":
        table.on_arrival(pid, "r" + pid)
    finish(table, "rb")
    table.release("b")
    assert [p.program_id for p in table.programs()] == ["a", "c", "b"]


def test_terminated_records_are_bounded(clock):
    table = ProgramTable(idle_expiry_s=60.0, max_terminated=2, clock=clock)
    table.on_arrival("live", "keep")
    for i in range(5):
        table.on_arrival(f"p{i}", f"r{i}")
        finish(table, f"r{i}")
        table.release(f"p{i}")
    assert [p.program_id for p in table.programs()] == ["live", "p3", "p4"]
    for i in range(3):
        with pytest.raises(UnknownProgram):
            table.get(f"p{i}")
    assert table.get("p4").status is Status.TERMINATED
    assert table.counters["records_evicted"] == 3
    assert table.counters["releases"]["explicit"] == 5
    assert table.get("live").in_flight == {"keep"}  # live programs are never evicted


def test_eviction_of_an_old_incarnation_keeps_the_latest(clock):
    table = ProgramTable(idle_expiry_s=60.0, max_terminated=2, clock=clock)
    for rid in ("r1", "r2"):
        table.on_arrival("a", rid)
        finish(table, rid)
        table.release("a")
    table.on_arrival("b", "rb")
    finish(table, "rb")
    table.release("b")  # evicts a#1
    assert table.get("a").incarnation == 2
    assert table.on_arrival("a", "r3").incarnation == 3


def test_many_requests_do_not_grow_the_rid_index(table):
    for i in range(10000):
        table.on_arrival("a", f"r{i}")
        finish(table, f"r{i}")
    assert table._by_rid == {}
    assert table.get("a").steps == 10000 and table.get("a").in_flight == set()
    for i in range(1000):
        table.on_arrival(f"p{i}", f"q{i}")
        finish(table, f"q{i}")
        table.release(f"p{i}")
    assert len(table._by_rid) == 0 and len(table) == 1
    assert len(table.programs()) == 1 + 100  # max_terminated=100


# ---- idle expiry --------------------------------------------------------------------------

def test_idle_program_expires_after_the_expiry(table, clock):
    table.on_arrival("a", "r1")
    finish(table, "r1")
    clock.advance(60)
    assert table.expire_idle() == []  # exactly the expiry: not more than it
    clock.advance(0.001)
    [p] = table.expire_idle()
    assert (p.program_id, p.status, p.release_cause) == ("a", Status.TERMINATED, "idle")
    assert table.counters["releases"] == {"explicit": 0, "final": 0, "idle": 1, "migrated": 0}
    assert table.expire_idle() == []
    assert times(table, "a") == (0.0, 60.001, 0.0)


def test_reasoning_programs_never_expire(table, clock):
    table.on_arrival("a", "r1")
    clock.advance(10_000)
    assert table.expire_idle() == []
    assert table.get("a").status is Status.ACTIVE


def test_idle_time_restarts_on_activity(table, clock):
    table.on_arrival("a", "r1")
    finish(table, "r1")
    clock.advance(50)
    table.on_arrival("a", "r2")
    clock.advance(50)
    finish(table, "r2")  # idle restarts here
    clock.advance(50)
    assert table.expire_idle() == []
    clock.advance(11)
    assert [p.program_id for p in table.expire_idle()] == ["a"]


def test_a_scheduler_pause_does_not_stop_the_idle_clock(table, clock):
    # A crashed agent's paused program must end too: paused time counts while no call waits.
    table.on_arrival("a", "r1")
    finish(table, "r1")
    clock.advance(50)
    table.pause("a")
    clock.advance(10)
    assert table.expire_idle() == []  # idle 60: not more than the expiry
    clock.advance(0.5)
    [p] = table.expire_idle()
    assert (p.program_id, p.release_cause, p.status) == ("a", "idle", Status.TERMINATED)
    assert times(table, "a") == (0.0, 50.0, 10.5)


def test_a_scheduler_resume_does_not_restart_the_idle_clock(table, clock):
    table.on_arrival("a", "r1")
    finish(table, "r1")
    table.pause("a")
    clock.advance(40)
    table.resume("a")  # the scheduler made room; the agent has not called
    clock.advance(20.5)
    assert [p.program_id for p in table.expire_idle()] == ["a"]


def test_an_operator_pause_stops_the_idle_clock_until_the_operator_resumes(table, clock):
    table.on_arrival("a", "r1")
    finish(table, "r1")
    clock.advance(50)
    p = table.pause("a", operator=True)
    assert (p.status, p.operator_paused) == (Status.PAUSED, True)
    clock.advance(1000)
    assert table.expire_idle() == []
    table.resume("a")  # idle restarts
    assert table.get("a").operator_paused is False
    clock.advance(60)
    assert table.expire_idle() == []
    clock.advance(1)
    assert [p.release_cause for p in table.expire_idle()] == ["idle"]
    assert times(table, "a") == (0.0, 111.0, 1000.0)


def test_an_operator_pause_of_a_program_the_scheduler_paused_is_exempt_too(table, clock):
    table.on_arrival("a", "r1")
    finish(table, "r1")
    table.pause("a")
    clock.advance(30)
    table.pause("a", operator=True)
    clock.advance(1000)
    assert table.expire_idle() == []
    assert table.counters["pauses"] == 1


def test_a_held_call_stops_the_idle_clock_and_its_leaving_restarts_it(table, clock):
    table.on_arrival("a", "r1")
    finish(table, "r1")
    table.pause("a")
    clock.advance(50)
    assert table.set_waiting("a", True).waiting is True
    clock.advance(500)
    assert table.expire_idle() == []
    table.set_waiting("a", False)  # its held call was aborted: idle restarts
    clock.advance(60)
    assert table.expire_idle() == []
    clock.advance(1)
    assert [p.program_id for p in table.expire_idle()] == ["a"]
    assert table.set_waiting("a", True) is None  # no longer live


def test_admitting_a_held_call_clears_waiting(table, clock):
    table.on_arrival("a", "r1")
    finish(table, "r1")
    table.pause("a")
    table.set_waiting("a", True)
    table.resume("a")
    p = table.on_arrival("a", "r2")
    assert (p.waiting, p.phase) == (False, Phase.REASONING)
    finish(table, "r2")
    clock.advance(61)
    assert [p.program_id for p in table.expire_idle()] == ["a"]


def test_tool_running_time_does_not_count_toward_idle(table, clock):
    table.on_arrival("a", "r1")
    finish(table, "r1")
    clock.advance(30)
    p = table.tool_event("a", "start", expected_s=500.0)
    assert (p.tool_running, p.tool_expected_s, p.tool_since) == (True, 500.0, 1030.0)
    clock.advance(1000)
    assert table.expire_idle() == []
    p = table.tool_event("a", "end")
    assert (p.tool_running, p.tool_expected_s) == (False, None)
    clock.advance(60)
    assert table.expire_idle() == []
    clock.advance(1)
    assert table.expire_idle() == [p]
    assert times(table, "a") == (0.0, 1091.0, 0.0)  # tool time is acting time


def test_a_tool_start_without_end_protects_twice_its_expected_time(table, clock):
    table.on_arrival("a", "r1")
    finish(table, "r1")
    clock.advance(5)
    table.tool_event("a", "start", expected_s=100.0)  # the "end" never comes
    clock.advance(200)
    assert table.expire_idle() == []  # exactly 2 x expected_s
    clock.advance(0.5)
    [p] = table.expire_idle()
    assert (p.program_id, p.release_cause, p.tool_running) == ("a", "idle", False)


def test_a_tool_start_without_expected_time_protects_for_the_idle_expiry(table, clock):
    table.on_arrival("a", "r1")
    finish(table, "r1")
    clock.advance(30)
    table.tool_event("a", "start")
    clock.advance(60)
    assert table.expire_idle() == []
    clock.advance(0.5)
    assert [p.program_id for p in table.expire_idle()] == ["a"]


def test_a_short_expected_tool_time_never_shortens_the_idle_expiry(table, clock):
    table.on_arrival("a", "r1")
    finish(table, "r1")
    table.tool_event("a", "start", expected_s=1.0)
    clock.advance(59)
    assert table.expire_idle() == []
    clock.advance(1.5)
    assert [p.program_id for p in table.expire_idle()] == ["a"]


def test_long_and_plain_spans_expire_in_their_own_time(table, clock):
    for pid in "abc":
        table.on_arrival(pid, "r" + pid)
        finish(table, "r" + pid)
    table.tool_event("a", "start", expected_s=45.0)  # protected until 90
    table.tool_event("b", "start", expected_s=40.0)  # until 80
    table.tool_event("b", "start", expected_s=50.0)  # a second start: until 100 from now
    clock.advance(61)
    assert [p.program_id for p in table.expire_idle()] == ["c"]
    clock.advance(30)
    assert [p.program_id for p in table.expire_idle()] == ["a"]
    clock.advance(9.5)
    assert [p.program_id for p in table.expire_idle()] == ["b"]
    assert len(table) == 0


def test_expiry_picks_only_the_overdue_programs(table, clock):
    for pid in "abc":
        table.on_arrival(pid, "r" + pid)
    finish(table, "ra")
    clock.advance(20)
    finish(table, "rb")
    clock.advance(41)  # a idle 61, b idle 41, c reasoning
    assert [p.program_id for p in table.expire_idle()] == ["a"]
    clock.advance(20)
    assert [p.program_id for p in table.expire_idle()] == ["b"]
    assert [p.program_id for p in table.programs() if p.status is not Status.TERMINATED] == ["c"]


def test_infinite_expiry_disables(clock):
    table = ProgramTable(idle_expiry_s=float("inf"), clock=clock)
    table.on_arrival("a", "r1")
    finish(table, "r1")
    clock.advance(1e9)
    assert table.expire_idle() == []


@pytest.mark.parametrize("kwargs", [{"idle_expiry_s": 0}, {"idle_expiry_s": -1},
                                    {"idle_expiry_s": float("nan")},
                                    {"idle_expiry_s": 1, "max_terminated": -1}])
def test_bad_settings_are_errors(kwargs):
    with pytest.raises(ValueError):
        ProgramTable(**kwargs)


# ---- tool hints, pause/resume -------------------------------------------------------------

def test_tool_event_bad_event(table):
    table.on_arrival("a", "r1")
    with pytest.raises(ValueError, match="'begin'"):
        table.tool_event("a", "begin")
    with pytest.raises(ValueError):
        table.tool_event("nope", "stop")  # bad event is reported before the unknown id


def test_pause_and_resume_are_state_only_and_idempotent(table, clock):
    table.on_arrival("a", "r1")
    p = table.pause("a")
    assert (p.status, p.status_since, p.phase) == (Status.PAUSED, 1000.0, Phase.REASONING)
    clock.advance(1)
    assert table.pause("a") is p and p.status_since == 1000.0
    finish(table, "r1")  # a paused program's request still finishes; phase still changes
    assert (p.status, p.phase) == (Status.PAUSED, Phase.ACTING)
    clock.advance(1)
    assert table.resume("a") is p and (p.status, p.status_since) == (Status.ACTIVE, 1002.0)
    assert table.resume("a") is p and p.status_since == 1002.0
    assert table.counters["pauses"] == 1 and table.counters["resumes"] == 1
    assert times(table, "a") == (0.0, 0.0, 2.0)


def test_release_of_a_paused_program(table):
    table.on_arrival("a", "r1")
    finish(table, "r1")
    table.pause("a")
    p = table.release("a")
    assert (p.status, p.release_cause) == (Status.TERMINATED, "explicit")


# ---- counters -----------------------------------------------------------------------------

def test_counters_and_live_counts(table, clock):
    table.on_arrival("a", "r1")
    table.on_arrival("b", "r2")
    table.on_arrival("c", "r3")
    finish(table, "r2")
    finish(table, "r3")
    table.pause("c", operator=True)
    assert table.live_count_by() == {"status": {"active": 2, "paused": 1},
                                      "phase": {"reasoning": 1, "acting": 2}}
    table.release("b")
    table.release("a")  # pending
    clock.advance(61)
    assert table.expire_idle() == []  # c is paused by an operator, a is reasoning
    table.resume("c")
    clock.advance(61)
    assert [p.program_id for p in table.expire_idle()] == ["c"]
    finish(table, "r1")
    assert table.live_count_by() == {"status": {"active": 0, "paused": 0},
                                      "phase": {"reasoning": 0, "acting": 0}}
    c = table.counters
    assert c["releases"] == {"explicit": 2, "final": 0, "idle": 1, "migrated": 0}
    assert (c["programs_created"], c["requests_arrived"], c["requests_finished"]) == (3, 3, 3)
    assert (c["pauses"], c["resumes"]) == (1, 1)


def test_next_arrival_clears_a_tool_hint_whose_end_was_lost(table, clock):
    table.on_arrival("p", "r1")
    finish(table, "r1")
    table.tool_event("p", "start", expected_s=5.0)
    assert table.get("p").tool_running
    table.on_arrival("p", "r2")  # the tool is done: the agent calls the LLM again
    finish(table, "r2")
    assert not table.get("p").tool_running
    clock.advance(61)
    assert [p.program_id for p in table.expire_idle()] == ["p"]


def test_misses_add_up_per_program_and_in_the_counters(table):
    table.on_arrival("a", "r1")
    assert table.program_for("r1").program_id == "a"
    table.on_finish("r1", prompt_tokens=50, cached_tokens=0, output_tokens=2, missed=(0, 0))
    table.on_arrival("a", "r2")
    table.on_finish("r2", prompt_tokens=80, cached_tokens=10, output_tokens=2, missed=(30, 11))
    rec = table.record(table.get("a"))
    assert (rec["missed_evicted_tokens"], rec["missed_changed_tokens"]) == (30, 11)
    assert table.counters["missed_evicted_tokens"] == 30
    assert table.counters["missed_changed_tokens"] == 11
    assert table.program_for("r2") is None


def test_live_program_is_none_once_terminated(table):
    table.on_arrival("a", "r1")
    assert table.live_program("a").program_id == "a"
    finish(table, "r1")
    table.release("a")
    assert table.live_program("a") is None and table.live_program("never") is None


@pytest.mark.parametrize("bad", [-1, -0.5, float("inf"), float("nan"), True, "5", [5]])
def test_a_tool_hint_with_an_expected_time_that_is_not_a_finite_non_negative_number_is_refused(
        bad):
    table = ProgramTable(idle_expiry_s=60)
    table.on_arrival("a", "r1")
    with pytest.raises(ValueError, match="expected_s must be a finite number of seconds"):
        table.tool_event("a", "start", expected_s=bad)
    assert table.get("a").tool_running is False
    assert table.tool_event("a", "start", expected_s=0).tool_expected_s == 0.0


def test_a_release_names_its_cause_and_an_unknown_cause_is_refused(table, clock):
    table.on_arrival("a", "r1")
    finish(table, "r1")
    with pytest.raises(ValueError, match="unknown release cause"):
        table.release("a", "bored")
    assert table.get("a").live
    p = table.release("a", "migrated")
    assert (p.status, p.release_cause) == (Status.TERMINATED, "migrated")
    assert table.counters["releases"] == {"explicit": 0, "final": 0, "idle": 0, "migrated": 1}


def test_evicted_misses_after_a_pause_are_counted_apart():
    table = ProgramTable(idle_expiry_s=60.0, max_terminated=10, clock=lambda: 0.0)
    table.on_arrival("a", "r1")
    table.on_finish("r1", prompt_tokens=100, cached_tokens=0, output_tokens=5, missed=(30, 0))
    table.pause("a")
    table.resume("a")
    table.on_arrival("a", "r2")
    table.on_finish("r2", prompt_tokens=120, cached_tokens=20, output_tokens=5, missed=(90, 0))
    table.on_arrival("a", "r3")
    table.on_finish("r3", prompt_tokens=130, cached_tokens=100, output_tokens=5, missed=(10, 0))
    assert (table.counters["missed_evicted_tokens"],
            table.counters["missed_evicted_paused_tokens"]) == (130, 90)
