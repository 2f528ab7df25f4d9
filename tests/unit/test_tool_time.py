"""The acting-phase duration model: exact observations, predictions and bounds."""

from __future__ import annotations

import pytest

from thunderagent_sglang.program.table import ProgramTable
from thunderagent_sglang.program.tool_time import (GAP, OTHER, Prediction, ToolTimes,
                                                   check_tool_name, quantile)
from tests.unit.test_program_table import FakeClock, finish


def test_tool_names_follow_the_one_rule():
    assert check_tool_name(None) is None
    assert check_tool_name("pytest") == "pytest"
    assert check_tool_name("a.b_c:d-e9") == "a.b_c:d-e9"
    assert check_tool_name("x" * 64) == "x" * 64
    for bad in ("", "x" * 65, "run tests", "a/b", "é", "a\0", 7, True, ["x"]):
        with pytest.raises(ValueError, match="tool must be 1-64 characters"):
            check_tool_name(bad)


def test_quantiles_are_nearest_rank():
    values = [1.0, 2.0, 3.0, 4.0, 10.0]
    assert (quantile(values, 0.5), quantile(values, 0.9), quantile([7.0], 0.9)) == (3.0, 10.0,
                                                                                    7.0)


def test_a_programs_own_history_wins_once_it_has_three_observations():
    times = ToolTimes()
    for seconds in (1.0, 2.0, 3.0, 4.0, 5.0):
        times.observe("pytest", "others", seconds)
    assert times.predict("pytest", "p") == Prediction(3.0, 5.0, 5, "tool")
    times.observe("pytest", "p", 30.0)
    times.observe("pytest", "p", 40.0)
    assert times.predict("pytest", "p").source == "tool"  # two of its own are not enough
    times.observe("pytest", "p", 50.0)
    assert times.predict("pytest", "p") == Prediction(40.0, 50.0, 3, "program")
    times.forget("p")
    assert times.predict("pytest", "p").source == "tool"
    assert times.predict("grep", "p") is None


def test_names_beyond_the_bound_share_other_and_windows_are_bounded():
    times = ToolTimes(max_names=2, window=3)
    assert [times.key(n) for n in ("a", "b", "c", "a", None, "other", "gap")] == [
        "a", "b", OTHER, "a", GAP, OTHER, OTHER]
    for seconds in (1.0, 2.0, 3.0, 4.0):
        times.observe("a", "p", seconds)
    assert times.stats() == {"a": {"observations": 4, "median_s": 3.0, "p90_s": 4.0}}


def test_the_table_observes_each_acting_phase_under_its_first_named_tool():
    clock = FakeClock()
    table = ProgramTable(idle_expiry_s=900, clock=clock)
    table.on_arrival("p", "r1")
    finish(table, "r1")
    assert table.record(table.get("p"))["tool_predicted_s"] is None  # nothing observed yet
    clock.advance(2.0)
    table.tool_event("p", "start", tool="pytest")
    table.tool_event("p", "start", tool="grep")  # not the phase's first name: ignored
    clock.advance(3.0)
    table.tool_event("p", "end")
    clock.advance(1.0)
    table.on_arrival("p", "r2")  # 6 s of acting, under pytest
    finish(table, "r2")
    clock.advance(0.5)
    table.on_arrival("p", "r3")  # 0.5 s, unnamed
    finish(table, "r3")
    rec = table.record(table.get("p"))
    assert (rec["tool"], rec["tool_predicted_s"], rec["tool_predicted_p90_s"]) == (None, 0.5, 0.5)
    table.tool_event("p", "start", expected_s=20.0, tool="pytest")
    rec = table.record(table.get("p"))
    assert (rec["tool"], rec["tool_expected_s"], rec["tool_predicted_s"]) == ("pytest", 20.0,
                                                                             6.0)
    assert table.tool_times.stats() == {
        "gap": {"observations": 1, "median_s": 0.5, "p90_s": 0.5},
        "pytest": {"observations": 1, "median_s": 6.0, "p90_s": 6.0}}
    assert table.counters["acting_observed"] == 2


def test_a_held_call_ends_the_acting_phase_when_it_is_held_not_when_admitted():
    clock = FakeClock()
    table = ProgramTable(idle_expiry_s=900, clock=clock)
    table.on_arrival("p", "r1")
    finish(table, "r1")
    clock.advance(4.0)
    table.set_waiting("p", True)  # held: the tool is over
    clock.advance(10.0)
    table.on_arrival("p", "r2")  # admitted 10 s later
    assert table.tool_times.stats()["gap"] == {"observations": 1, "median_s": 4.0, "p90_s": 4.0}
    assert table.counters["acting_observed"] == 1


def test_a_first_call_and_a_terminated_program_observe_nothing():
    clock = FakeClock()
    table = ProgramTable(idle_expiry_s=900, clock=clock)
    clock.advance(5.0)
    table.on_arrival("p", "r1")  # its creation is not an acting phase
    finish(table, "r1")
    table.release("p")
    clock.advance(1.0)
    table.on_arrival("p", "r2")  # a new incarnation
    assert table.tool_times.stats() == {} and table.counters["acting_observed"] == 0


def test_a_bad_tool_name_is_a_value_error_and_changes_nothing():
    table = ProgramTable(idle_expiry_s=900, clock=FakeClock())
    table.on_arrival("p", "r1")
    finish(table, "r1")
    with pytest.raises(ValueError, match="tool must be"):
        table.tool_event("p", "start", tool="rm -rf /")
    assert (table.get("p").tool_running, table.counters["tool_events"]) == (False, 0)
