"""``HeldCalls``: held calls by program in arrival order, with counts and headroom kept exact."""

from __future__ import annotations

from thunderagent_sglang.engine.held import Held, HeldCalls


def held(program_id, rid, max_new=4):
    return Held(program_id, rid, 0.0, max_new, lambda track=True, chain=None: None)


def test_taking_some_calls_keeps_programs_in_first_held_order_and_counts_exact():
    calls = HeldCalls()
    for item in (held("p", "p-1"), held("q", "q-1", 7), held("p", "x-2", 5), held("r", "r-1")):
        calls.add(item)
    taken = calls.take(lambda item: item.rid.startswith("p-") or item.rid == "r-1")
    assert [item.rid for item in taken] == ["p-1", "r-1"]
    assert list(calls.programs()) == ["p", "q"]  # p keeps its place before q
    assert (calls.count(), calls.count("p"), calls.count("r")) == (2, 1, 0)
    assert (calls.headroom("p"), calls.headroom("q"), calls.headroom("r")) == (5, 7, 0)
    assert "r" not in calls


def test_the_first_call_of_a_program_is_reported_and_pop_takes_all_of_it():
    calls = HeldCalls()
    assert calls.add(held("p", "p-1")) is True and calls.add(held("p", "p-2")) is False
    assert [item.rid for item in calls.pop("p")] == ["p-1", "p-2"]
    assert (calls.count(), calls.headroom("p"), calls.first_since("p")) == (0, 0, None)
