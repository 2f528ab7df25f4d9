"""The live view's event ring: numbering, paging, the oldest dropped first, and what a reader
missed."""

from __future__ import annotations

import pytest

from thunderagent_sglang.program.event_ring import EventRing


def ring(capacity=4):
    times = iter(range(100, 200))
    return EventRing(capacity, clock=lambda: next(times))


def test_events_are_numbered_and_read_in_pages_from_a_sequence():
    r = ring(10)
    r.add("call", "p1")
    r.add("tool", "p1", event="start", tool="bash", expected_s=None)
    r.add("end", "p2", cause="explicit")
    page = r.since(0, limit=2)
    assert page["events"] == [
        {"seq": 1, "t": 100, "kind": "call", "program_id": "p1"},
        {"seq": 2, "t": 101, "kind": "tool", "program_id": "p1", "event": "start",
         "tool": "bash"}]
    assert (page["next"], page["first"], page["last"], page["missed"]) == (2, 1, 3, 0)
    rest = r.since(page["next"])
    assert [e["seq"] for e in rest["events"]] == [3] and rest["next"] == 3
    assert r.since(3) == {"events": [], "next": 3, "first": 1, "last": 3, "missed": 0,
                          "capacity": 10}


def test_the_oldest_events_go_first_and_a_late_reader_is_told_how_many_it_missed():
    r = ring(4)
    for i in range(7):
        r.add("call", f"p{i}")
    page = r.since(1)
    assert [e["seq"] for e in page["events"]] == [4, 5, 6, 7]
    assert (page["first"], page["missed"], page["next"]) == (4, 2, 7)
    assert r.since(0)["missed"] == 3 and r.since(3)["missed"] == 0
    assert r.since(99)["events"] == [] and r.since(99)["next"] == 99


def test_an_empty_ring_and_bad_arguments():
    r = ring(2)
    assert r.since(0) == {"events": [], "next": 0, "first": 1, "last": 0, "missed": 0,
                          "capacity": 2}
    for bad in ({"seq": -1}, {"seq": 0, "limit": 0}, {"seq": 0, "limit": 5001}):
        with pytest.raises(ValueError):
            r.since(**bad)
    with pytest.raises(ValueError):
        r.add("exploded", "p")
    with pytest.raises(ValueError):
        EventRing(0)
