"""Scheduler glue at the edges: decode retraction order, and held calls at shutdown."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

program_pausing = pytest.importorskip("thunderagent_sglang.engine.program_pausing")
program_retraction = pytest.importorskip("thunderagent_sglang.engine.program_retraction")
program_scheduler = pytest.importorskip("thunderagent_sglang.engine.program_scheduler")

from thunderagent_sglang import config  # noqa: E402
from thunderagent_sglang.policy.demand import DemandLedger, block_keys  # noqa: E402
from thunderagent_sglang.program.table import ProgramTable  # noqa: E402


@pytest.fixture
def table(monkeypatch):
    monkeypatch.setattr(program_pausing, "S", program_pausing._State())
    monkeypatch.setattr(program_retraction, "_COUNTERS", {"retraction_orders": 0})
    table, ledger = ProgramTable(idle_expiry_s=60), DemandLedger()
    program_pausing.install(config.ThunderAgentConfig(), table, ledger)
    program_pausing.set_capacity(4096)
    return table


def running(table, program_id, rid, context_tokens, output=2):
    """A running request of ``program_id`` whose program's context is ``context_tokens``."""
    if program_id is not None:
        table.on_arrival(program_id, rid)
        ledger = program_pausing.S.ledger
        ledger.set_context(program_id, block_keys(list(range(context_tokens)), 16))
        ledger.set_active(program_id, True)
    return SimpleNamespace(rid=rid, origin_input_ids=[1] * context_tokens,
                           output_ids=[1] * output)


def sglang_keep_first(reqs):
    """SGLang 0.5.23's default: most-preferred to keep first, popped from the end."""
    return sorted(range(len(reqs)),
                  key=lambda i: (len(reqs[i].output_ids), -len(reqs[i].origin_input_ids)),
                  reverse=True)


def test_retraction_takes_the_marked_program_first_then_untagged_then_the_smallest(table):
    reqs = [running(table, "big", "b1", 512), running(table, "marked", "m1", 960),
            running(table, None, "u1", 64), running(table, "small", "s1", 128)]
    program_pausing.S.marked.add("marked")
    keep_first = program_retraction.reorder(sglang_keep_first, reqs)
    # popped from the end: marked, untagged, small, then big
    assert [reqs[i].rid for i in keep_first] == ["b1", "s1", "u1", "m1"]
    assert program_retraction.stats() == {"retraction_orders": 1}


def test_retraction_keeps_sglangs_order_when_nothing_running_is_tagged(table):
    reqs = [running(table, None, f"u{i}", 16 * (i + 1), output=i) for i in range(4)]
    assert program_retraction.reorder(sglang_keep_first, reqs) == sglang_keep_first(reqs)
    assert program_retraction.stats() == {"retraction_orders": 0}


def test_a_failing_retraction_order_falls_back_to_sglangs(table, monkeypatch):
    reqs = [running(table, "a", "a1", 64), running(table, "b", "b1", 32)]
    logged = []

    def broken(rid):
        raise RuntimeError("boom")

    monkeypatch.setattr(program_pausing.S.table, "program_for", broken)
    monkeypatch.setattr(program_retraction, "get_logger",
                        lambda: SimpleNamespace(exception=logged.append))
    assert program_retraction.reorder(sglang_keep_first, reqs) == sglang_keep_first(reqs)
    assert logged == ["ThunderAgent: decode retraction order failed; SGLang's kept"]


def test_shutdown_answers_every_held_call_and_any_held_later(table):
    answered = []
    for rid in ("p-1", "p-2", "q-1"):
        program_pausing.hold(rid[0], rid, 4, lambda track=True: None)
    assert program_pausing.shut_down(lambda item: answered.append(item.rid)) == 3
    assert answered == ["p-1", "p-2", "q-1"] and program_pausing.held_count() == 0
    program_pausing.hold("p", "p-3", 4, lambda track=True: None)
    assert answered[-1] == "p-3" and program_pausing.held_count() == 0
    assert program_pausing.stats()["held_shutdown"] == 4


def test_a_call_answered_at_shutdown_goes_to_sglang_untracked_and_is_aborted_with_503(
        table, monkeypatch):
    admitted, aborts = [], []
    scheduler = SimpleNamespace(abort_request=aborts.append)
    monkeypatch.setitem(program_scheduler._state, "scheduler", scheduler)
    program_pausing.hold("p", "p-1", 4, lambda track=True: admitted.append(track))
    program_pausing.shut_down(program_scheduler._answer_unavailable)
    assert admitted == [False]
    (abort,) = aborts
    assert abort.rid == "p-1" and not abort.abort_all
    assert abort.finished_reason == {"type": "abort", "status_code": 503, "err_type": None,
                                     "message": program_scheduler.SHUTDOWN_MESSAGE}
