"""The router's per-call work: where a stream's head ends (``forward.HeadScan``, chunk by chunk),
and a replica's load (``Replica.load``, summed once per poll)."""

from __future__ import annotations

from thunderagent_sglang.router.forward import (
    FIRST_EVENT_LIMIT, MAX_PREAMBLE_EVENTS, MIGRATED_MARKER, HeadScan)

ROLE = b'data: {"choices":[{"delta":{"role":"assistant"}}]}\n\n'
TOKEN = b'data: {"choices":[{"delta":{"content":"hi"}}]}\n\n'


def fed(*chunks: bytes) -> list[bool]:
    scan = HeadScan()
    return [scan.add(c) for c in chunks]


def test_the_head_ends_at_the_first_event_that_is_not_a_preamble():
    assert fed(ROLE, TOKEN[:10], TOKEN[10:]) == [False, False, True]
    assert fed(ROLE + TOKEN) == [True]
    assert fed(TOKEN + ROLE) == [True]  # each event is checked as it completes


def test_a_marker_split_across_chunks_ends_it():
    half = len(MIGRATED_MARKER) // 2
    body = b"data: {\"error\": \"" + MIGRATED_MARKER
    cut = len(body) - half
    assert fed(ROLE, body[:cut], body[cut:]) == [False, False, True]


def test_preambles_alone_end_it_after_their_bound_or_at_64_kib():
    assert fed(*[ROLE] * MAX_PREAMBLE_EVENTS)[-2:] == [False, True]
    assert fed(b"x" * (FIRST_EVENT_LIMIT - 1), b"x") == [False, True]


def test_a_replicas_load_sums_its_view_once_per_poll():
    from thunderagent_sglang.router.replicas import Replica

    replica = Replica("http://a")
    replica.saw({"scheduler": {"capacity_tokens": 1000, "footprint_tokens": 400.0},
                 "programs": [
                     {"program_id": "p", "context_tokens": 300, "waiting": 1, "status": "paused"},
                     {"program_id": "q", "context_tokens": 100, "status": "active"},
                     {"program_id": "n", "context_tokens": 200, "waiting": 1,
                      "status": "waiting"}]}, now=5.0, took_s=0.01)
    replica.pending = {"x": 4.0, "y": 4.5}  # placed since the poll
    load = replica.load()
    assert (load.waiting_tokens, load.pending_tokens, load.placed) == (500, 400, 2)
    assert (load.capacity_tokens, load.footprint_tokens) == (1000, 400.0)
