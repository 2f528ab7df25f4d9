"""The scheduler-side glue: identity handed over in custom_params, and fail-safe hooks."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

program_scheduler = pytest.importorskip("thunderagent_sglang.engine.program_scheduler")
from thunderagent_sglang.engine import program_ipc  # noqa: E402


def sampling(custom_params):
    return SimpleNamespace(custom_params=custom_params)


def test_identity_is_taken_out_and_empty_custom_params_become_none():
    params = sampling({program_ipc.ID_KEY: "p1", program_ipc.FINAL_KEY: True})
    assert program_scheduler.take_identity(params) == ("p1", None, True, None)
    assert params.custom_params is None


def test_the_clients_own_custom_params_are_left_as_they_were():
    params = sampling({"mine": 3, program_ipc.ID_KEY: "p1", program_ipc.PARENT_KEY: "root",
                       program_ipc.FINAL_KEY: False})
    assert program_scheduler.take_identity(params) == ("p1", "root", False, None)
    assert params.custom_params == {"mine": 3}


def test_program_priority_is_taken_out_with_the_identity():
    params = sampling({program_ipc.ID_KEY: "p1", program_ipc.PRIORITY_KEY: 7})
    assert program_scheduler.take_identity(params) == ("p1", None, False, 7)
    assert params.custom_params is None


@pytest.mark.parametrize("custom", [None, {}, {"mine": 1}])
def test_untagged_requests_are_untouched(custom):
    params = sampling(custom)
    assert program_scheduler.take_identity(params) is None
    assert params.custom_params == custom


def test_a_failing_hook_is_logged_and_does_not_raise(capfd):
    @program_scheduler.guarded
    def broken(x):
        raise RuntimeError("boom")

    assert broken(1) is None
    err = capfd.readouterr().err
    assert "ThunderAgent: broken failed" in err and "RuntimeError: boom" in err


program_pausing = pytest.importorskip("thunderagent_sglang.engine.program_pausing")


def _fresh_scheduler(monkeypatch, capacity=1000):
    from thunderagent_sglang import config
    from thunderagent_sglang.policy.demand import DemandLedger
    from thunderagent_sglang.program.table import ProgramTable

    monkeypatch.setattr(program_pausing, "S", program_pausing._State())
    table, ledger = ProgramTable(idle_expiry_s=60), DemandLedger()
    program_pausing.install(config.ThunderAgentConfig(), table, ledger)
    program_pausing.set_capacity(capacity)
    return table, ledger


def test_a_new_program_that_fits_is_admitted_by_the_decision(monkeypatch):
    from thunderagent_sglang.policy.demand import block_keys

    _, ledger = _fresh_scheduler(monkeypatch)
    admitted = []
    ledger.set_context("new", block_keys(list(range(3, 35)), 16))
    ledger.set_active("new", False)
    assert program_pausing.should_hold("new")  # a program not admitted yet waits for a decision
    program_pausing.hold("new", "r1", 4, lambda track=True: admitted.append(("r1", track)))
    program_pausing.check("arrival")
    assert admitted == [("r1", True)] and program_pausing.held_count() == 0


def test_a_failing_decision_releases_held_calls_instead_of_stranding_them(monkeypatch):
    from thunderagent_sglang.policy.demand import block_keys

    _, ledger = _fresh_scheduler(monkeypatch)
    admitted = []
    ledger.set_context("new", block_keys(list(range(3, 35)), 16))
    ledger.set_active("new", False)
    program_pausing.hold("new", "r1", 4, lambda track=True: admitted.append("r1"))

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(program_pausing, "decide", broken)
    program_pausing.check("arrival")
    assert admitted == ["r1"] and program_pausing.held_count() == 0


def test_an_abort_hands_the_held_calls_it_names_to_sglang_untracked(monkeypatch):
    _fresh_scheduler(monkeypatch)
    admitted = []
    for rid in ("abc-1", "abc-2", "xyz"):
        program_pausing.hold("p", rid, 4, lambda track=True, rid=rid: admitted.append((rid, track)))
    assert program_pausing.release_for_abort("abc", abort_all=False) == 2
    assert admitted == [("abc-1", False), ("abc-2", False)]
    assert program_pausing.held_count("p") == 1
    assert program_pausing.stats()["held_aborted"] == 2
