"""The decision trace and its replay: the engine's recorder writes what the replay reads; the
replay finds every kind of difference on constructed traces (the real server's trace is
replayed in tests/integration/test_scheduling.py)."""

from __future__ import annotations

import argparse
import json
import logging

import pytest

from sim.__main__ import main
from sim.replay import Unsupported, read, replay
from thunderagent_sglang import config
from thunderagent_sglang.engine.decision_trace import DecisionTrace, NoTrace, open_trace
from thunderagent_sglang.policy.scheduling import Decision
from thunderagent_sglang.policy.snapshot import ProgramView

CONFIG = {"e": "config", "t": 0.0, "capacity_tokens": 1000, "high_watermark": 0.9,
          "low_watermark": 0.7, "half_life_s": 5.0, "decay": True, "max_pause_s": 300.0,
          "backfill": True, "block": 16, "tick_s": 0.2}


def view(**fields) -> dict:
    v = {"program_id": "p1", "status": "paused", "phase": "acting", "context_tokens": 100,
         "tool_seconds": 0.0, "waiting": True, "priority": 0, "paused_seconds": 0.0,
         "marked": False, "decode_headroom": 4, "is_new": True, "attained_s": 0.0}
    return {**v, **fields}


def check(t, cause, views, **decision) -> dict:
    return {"e": "check", "t": t, "cause": cause, "views": views, "untagged": 0,
            **{k: decision.get(k, []) for k in ("pause", "mark", "unmark", "resume")}}


def trace(**changes) -> list[dict]:
    """p1's first call is held (new), admitted by the arrival's decision, finishes at 2.0;
    a tick at 2.5 sees it acting; it ends at 5.0."""
    records = [
        CONFIG,
        {"e": "held", "t": 1.0, "p": "p1", "rid": "r1", "tokens": list(range(100)),
         "headroom": 4},
        check(1.0, "arrival", [view()], resume=["p1"]),
        {"e": "call", "t": 1.001, "p": "p1", "rid": "r1", "tokens": list(range(100)),
         "headroom": 4},
        {"e": "finish", "t": 2.0, "p": "p1", "rid": "r1", "tokens": list(range(103))},
        check(2.5, "tick", [view(status="active", context_tokens=103, tool_seconds=0.5,
                                 waiting=False, decode_headroom=0, is_new=False,
                                 attained_s=0.999)]),
        {"e": "end", "t": 5.0, "p": "p1", "cause": "idle"},
    ]
    for index, record in changes.items():
        records[int(index[1:])] = {**records[int(index[1:])], **record}
    return [{**r, "_line": i + 1} for i, r in enumerate(records)]


def test_the_same_events_give_the_same_snapshots_and_decisions():
    result = replay(trace())
    assert (result.checks, result.events, result.differences) == (2, 6, [])
    assert result.decided == {"pause": 0, "mark": 0, "unmark": 0, "resume": 1}


def test_a_config_record_mid_trace_holds_from_then():
    """``--thunderagent-decay auto`` writes a new config when it switches decay: here one that
    also lowers the watermarks, so the tick must pause the acting p1; replayed under the first
    config it would not."""
    records = trace(r5={"pause": ["p1"]})
    later = {**CONFIG, "t": 2.2, "decay": False, "high_watermark": 0.05, "low_watermark": 0.05,
             "_line": 99}
    records.insert(5, later)
    result = replay(records)
    assert (result.events, result.differences) == (7, [])
    assert result.decided["pause"] == 1


def test_a_different_decision_is_reported_with_its_line():
    result = replay(trace(r5={"pause": ["p1"]}))
    assert result.differences == [{"line": 6, "t": 2.5, "what": "decision (tick): pause",
                                    "engine": ["p1"], "sim": []}]


def test_a_different_view_is_reported_field_by_field_times_within_the_tolerance():
    engine_view = view(context_tokens=90, paused_seconds=0.04)  # 0.04 s: within tolerance
    result = replay(trace(r2={"views": [engine_view]}))
    assert result.differences == [{"line": 3, "t": 1.0, "what": "view of p1: context_tokens",
                                   "engine": 90, "sim": 100}]
    late = replay(trace(r2={"views": [view(paused_seconds=0.2)]}))
    assert [d["what"] for d in late.differences] == ["view of p1: paused_seconds"]


def test_a_call_the_engine_admitted_that_the_simulator_would_hold_is_reported():
    records = trace()
    records[1] = {**records[3], "t": 1.0, "_line": 2, "e": "call"}  # new, never held
    del records[3]
    result = replay(records)
    assert result.differences[0] == {"line": 2, "t": 1.0, "what": "call r1 of p1",
                                     "engine": "admitted", "sim": "held"}


def test_operator_pauses_and_traces_without_a_config_are_refused():
    records = trace()
    records.insert(5, {"e": "pause", "t": 2.2, "p": "p1", "reason": "operator",
                       "operator": True, "_line": 99})
    with pytest.raises(Unsupported, match="line 99: an operator's pause of p1"):
        replay(records)
    with pytest.raises(Unsupported, match="does not start with its config"):
        replay(trace()[1:])
    with pytest.raises(Unsupported, match="line 2: unknown record kind 'bogus'"):
        replay(trace(r1={"e": "bogus"}))


def test_the_recorder_writes_what_the_replay_reads(tmp_path, capsys):
    path = tmp_path / "trace.jsonl"
    recorder = open_trace(str(path), leader=True)
    assert isinstance(recorder, DecisionTrace)
    for record in trace():
        fields = {k: v for k, v in record.items() if k not in ("e", "t", "_line")}
        if record["e"] == "check":
            views = [ProgramView(**v) for v in fields["views"]]
            recorder.check(record["t"], fields["cause"], views, 0, Decision(
                tuple(fields["pause"]), tuple(fields["mark"]), tuple(fields["unmark"]),
                tuple(fields["resume"]), {}, 0.0))
        else:
            recorder.write(record["e"], record["t"], **fields)
    assert [{k: v for k, v in r.items() if k != "_line"} for r in read(path)] == \
        [{k: v for k, v in r.items() if k != "_line"} for r in trace()]
    assert main(["replay", str(path)]) == 0
    assert "6 events, 2 decisions" in capsys.readouterr().out


def test_the_replay_command_exits_1_on_a_difference_and_2_on_a_bad_file(tmp_path, capsys):
    path = tmp_path / "trace.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in trace(r5={"resume": ["p9"]})) + "\n")
    assert main(["replay", str(path)]) == 1
    assert '"what": "decision (tick): resume"' in capsys.readouterr().out
    path.write_text("not json\n")
    assert main(["replay", str(path)]) == 2
    assert "not a decision trace" in capsys.readouterr().err


def test_tracing_is_off_without_a_path_on_other_ranks_and_when_the_file_cannot_be_opened(
        tmp_path, caplog):
    assert type(open_trace(None, leader=True)) is NoTrace
    assert type(open_trace(str(tmp_path / "t.jsonl"), leader=False)) is NoTrace
    assert not (tmp_path / "t.jsonl").exists()
    with caplog.at_level(logging.ERROR):
        assert type(open_trace(str(tmp_path / "gone" / "t.jsonl"), leader=True)) is NoTrace
    assert "tracing is off" in caplog.text


def test_the_trace_flag_refuses_a_directory_and_a_missing_parent(tmp_path):
    parser = argparse.ArgumentParser(exit_on_error=False)
    config.add_cli_group(parser)
    flag = "--thunderagent-decision-trace"
    ns = parser.parse_args([flag, str(tmp_path / "d.jsonl")])
    assert config.from_namespace(ns).decision_trace == str(tmp_path / "d.jsonl")
    for bad, message in ((tmp_path, "is a directory"), (tmp_path / "no" / "d.jsonl",
                                                         "does not exist")):
        with pytest.raises(argparse.ArgumentError, match=message):
            parser.parse_args([flag, str(bad)])
