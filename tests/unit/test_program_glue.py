"""The scheduler-side glue: identity handed over in custom_params, and fail-safe hooks."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

runtime_module = pytest.importorskip("thunderagent_sglang.engine.runtime")
from thunderagent_sglang import config  # noqa: E402
from thunderagent_sglang.engine import guards, program_ipc  # noqa: E402
from thunderagent_sglang.policy.demand import block_keys  # noqa: E402

take_identity = runtime_module.take_identity


def sampling(custom_params):
    return SimpleNamespace(custom_params=custom_params)


def test_identity_is_taken_out_and_empty_custom_params_become_none():
    params = sampling({program_ipc.ID_KEY: "p1", program_ipc.FINAL_KEY: True})
    assert take_identity(params) == ("p1", None, True, None, 0.0)
    assert params.custom_params is None


def test_the_clients_own_custom_params_are_left_as_they_were():
    params = sampling({"mine": 3, program_ipc.ID_KEY: "p1", program_ipc.PARENT_KEY: "root",
                       program_ipc.FINAL_KEY: False})
    assert take_identity(params) == ("p1", "root", False, None, 0.0)
    assert params.custom_params == {"mine": 3}


def test_program_priority_is_taken_out_with_the_identity():
    params = sampling({program_ipc.ID_KEY: "p1", program_ipc.PRIORITY_KEY: 7,
                       program_ipc.HELD_KEY: 12.5})
    assert take_identity(params) == ("p1", None, False, 7, 12.5)
    assert params.custom_params is None


@pytest.mark.parametrize("custom", [None, {}, {"mine": 1}])
def test_untagged_requests_are_untouched(custom):
    params = sampling(custom)
    assert take_identity(params) is None
    assert params.custom_params == custom


def test_a_failing_hook_is_logged_and_does_not_raise(monkeypatch):
    logged = []
    monkeypatch.setattr(guards, "get_logger", lambda: SimpleNamespace(
        exception=lambda message, *args: logged.append(message % args)))

    @guards.guarded
    def broken(x):
        raise RuntimeError("boom")

    assert broken(1) is None
    assert logged == ["ThunderAgent: broken failed; program state may be off"]


def _fresh_runtime(capacity=1000):
    runtime = runtime_module.ProgramRuntime(config.ThunderAgentConfig())
    runtime.scheduler.set_capacity(capacity)
    return runtime


def test_a_new_program_that_fits_is_admitted_by_the_decision():
    runtime = _fresh_runtime()
    sched, ledger = runtime.scheduler, runtime.ledger
    admitted = []
    ledger.set_context("new", block_keys(list(range(3, 35)), 16))
    ledger.set_active("new", False)
    assert sched.should_hold("new")  # a program not admitted yet waits for a decision
    sched.hold("new", "r1", 4, lambda track=True, chain=None: admitted.append(("r1", track)))
    sched.check("arrival")
    assert admitted == [("r1", True)] and sched.held.count() == 0


def test_a_failing_decision_releases_held_calls_instead_of_stranding_them(monkeypatch):
    from thunderagent_sglang.engine import program_pausing

    runtime = _fresh_runtime()
    sched, ledger = runtime.scheduler, runtime.ledger
    admitted = []
    ledger.set_context("new", block_keys(list(range(3, 35)), 16))
    ledger.set_active("new", False)
    sched.hold("new", "r1", 4, lambda track=True, chain=None: admitted.append("r1"))

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(program_pausing, "decide", broken)
    sched.check("arrival")
    assert admitted == ["r1"] and sched.held.count() == 0


def test_an_abort_hands_the_held_calls_it_names_to_sglang_untracked():
    sched = _fresh_runtime().scheduler
    admitted = []
    for rid in ("abc-1", "abc-2", "xyz"):
        sched.hold("p", rid, 4, lambda track=True, chain=None, rid=rid: admitted.append((rid, track)))
    assert sched.release_for_abort("abc", abort_all=False) == 2
    assert admitted == [("abc-1", False), ("abc-2", False)]
    assert sched.held.count("p") == 1
    assert sched.stats()["held_aborted"] == 2
