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
