"""The sidecar's environment reports: the one checking rule, and the table keeping them."""

from __future__ import annotations

import pytest

from thunderagent_sglang.program.environments import (COMMAND_CHARS, MAX_COMMANDS,
                                                      MAX_ENVIRONMENTS, check_environments,
                                                      short_command)
from thunderagent_sglang.program.record import UnknownProgram
from tests.unit.test_program_table import FakeClock, finish
from thunderagent_sglang.program.table import ProgramTable

ENV = {"env_id": "env-0123456789ab", "backend": "local", "state": "running",
       "disk_bytes": 4096, "disk_cap": 16 << 20,
       "commands": [{"cmd": "<img src=x onerror=alert(1)>", "started_at": 1700000000.5,
                     "tool": "pytest"}]}


def test_a_good_report_is_copied_with_known_keys_only():
    assert check_environments({"environments": [ENV]}) == [ENV]
    bare = {"env_id": "e", "backend": "docker", "state": "paused"}
    assert check_environments({"environments": [bare]}) == [
        {"env_id": "e", "backend": "docker", "state": "paused", "disk_bytes": 0,
         "disk_cap": None, "commands": []}]
    assert check_environments({"environments": []}) == []


@pytest.mark.parametrize("body, message", [
    (None, "must be {\"environments\""),
    ([], "must be {\"environments\""),
    ({"environments": [], "extra": 1}, "nothing else"),
    ({"environments": {}}, "a list of at most 64"),
    ({"environments": [ENV] * 2}, "lists an env_id twice"),
    ({"environments": [{**ENV, "env_id": f"e{i}"} for i in range(MAX_ENVIRONMENTS + 1)]},
     "a list of at most 64"),
    ({"environments": ["env-1"]}, r"environments\[0\] must be an object"),
    ({"environments": [{**ENV, "secret": 1}]}, "keys among"),
    ({"environments": [{**ENV, "env_id": "a b"}]}, r"env_id must be 1-64"),
    ({"environments": [{**ENV, "env_id": None}]}, r"env_id must be 1-64"),
    ({"environments": [{**ENV, "backend": "x" * 65}]}, r"backend must be 1-64"),
    ({"environments": [{**ENV, "state": "gone"}]}, "state must be one of"),
    ({"environments": [{**ENV, "disk_bytes": -1}]}, "disk_bytes must be a whole number"),
    ({"environments": [{**ENV, "disk_bytes": 1.5}]}, "disk_bytes must be a whole number"),
    ({"environments": [{**ENV, "disk_cap": True}]}, "disk_cap must be a whole number"),
    ({"environments": [{**ENV, "commands": "ls"}]}, "commands must be a list"),
    ({"environments": [{**ENV, "commands": [ENV["commands"][0]] * (MAX_COMMANDS + 1)}]},
     "at most 16"),
    ({"environments": [{**ENV, "commands": [{"cmd": "x" * 513, "started_at": 1}]}]},
     "at most 512 characters"),
    ({"environments": [{**ENV, "commands": [{"cmd": None, "started_at": 1}]}]}, "cmd must be"),
    ({"environments": [{**ENV, "commands": [{"cmd": "ls", "started_at": float("nan")}]}]},
     "started_at must be"),
    ({"environments": [{**ENV, "commands": [{"cmd": "ls"}]}]}, "started_at must be"),
    ({"environments": [{**ENV, "commands": [{"cmd": "ls", "started_at": 1, "tool": "a b"}]}]},
     r"commands\[0\].tool must be 1-64"),
])
def test_a_bad_report_says_what_is_wrong(body, message):
    with pytest.raises(ValueError, match=message):
        check_environments(body)


def test_a_long_command_is_cut_to_a_fixed_length():
    assert short_command("ls -l") == "ls -l"
    cut = short_command("x" * 1000)
    assert (len(cut), cut[-1]) == (COMMAND_CHARS, "\u2026")


def test_the_table_keeps_the_last_report_without_touching_idle_time():
    clock = FakeClock()
    table = ProgramTable(idle_expiry_s=60.0, clock=clock)
    table.on_arrival("p", "r1")
    finish(table, "r1")
    assert table.record(table.get("p"))["environments"] is None
    clock.advance(50)
    table.set_environments("p", [ENV])
    table.set_environments("p", [{**ENV, "commands": []}])
    assert table.record(table.get("p"))["environments"] == [{**ENV, "commands": []}]
    assert table.counters["environment_reports"] == 2
    clock.advance(11)
    assert [p.program_id for p in table.expire_idle()] == ["p"]  # a report is not activity
    with pytest.raises(UnknownProgram):
        table.set_environments("p", [])
    with pytest.raises(UnknownProgram):
        table.set_environments("never", [])
    table.on_arrival("q", "r2")
    with pytest.raises(ValueError, match="state must be one of"):
        table.set_environments("q", [{**ENV, "state": "?"}])
    assert table.record(table.get("q"))["environments"] is None
