"""Replay a real server's decision trace through the simulator's policy, decision by decision.

A server started with ``--thunderagent-decision-trace FILE`` writes what its scheduler read
(calls held and admitted with their tokens, finishes, ends, pauses and resumes) and every
decision it took with its snapshot (``engine/decision_trace.py``). The replay feeds the same
events, at the recorded times, to ``sim.policies.Thunder`` (the simulator's bookkeeping around
the engine's own ``policy.scheduling.decide``), and at each recorded decision builds the
simulator's snapshot and decision. It reports every difference: a view (field by field; times
within ``TIME_TOLERANCE_S``, since the engine reads its clock a little after the event), a
decision (its pause, mark, unmark and resume sets), a call the engine held that the simulator
would admit or the reverse, a pause or resume the simulator did not take. The simulator runs
on its own decisions throughout, so one difference can bring others after it: the first one
is the one to read.

Not replayed: operator pauses and resumes (the engine leaves operator-paused programs out of
its snapshots; the simulator has no operator), priorities, calls answered while held
(aborts, 429s, shutdown) and calls a router had held before (a move): a trace with them is
refused, naming the record.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Iterable

from sim.policies import Thunder
from thunderagent_sglang.policy.demand import block_keys
from thunderagent_sglang.policy.snapshot import ACTIVE, PAUSED, SchedulerConfig

TIME_TOLERANCE_S = 0.05
TIME_FIELDS = ("tool_seconds", "paused_seconds", "attained_s")
SETS = ("pause", "mark", "unmark", "resume")
KINDS = ("held", "call", "finish", "end", "pause", "resume", "check", "config")
# a config after the first: --thunderagent-decay auto switched decay (the new config from then)


class Unsupported(ValueError):
    """The trace holds something the replay does not model."""


@dataclass
class Replay:
    checks: int = 0
    events: int = 0
    differences: list[dict] = field(default_factory=list)
    decided: dict[str, int] = field(default_factory=lambda: {k: 0 for k in SETS})

    def differ(self, record: dict, what: str, engine, sim) -> None:
        self.differences.append({"line": record["_line"], "t": record["t"], "what": what,
                                 "engine": engine, "sim": sim})


class _Stub:
    """What ``Thunder`` reads of its engine: the block size; released calls are collected."""

    def __init__(self, block: int):
        self.block = block
        self.cache = SimpleNamespace(capacity=0)
        self.released: list = []

    def release(self, calls) -> None:
        self.released.extend(calls)


def read(path: Path) -> list[dict]:
    records = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if line.strip():
            record = json.loads(line)
            record["_line"] = number
            records.append(record)
    return records


def replay(records: Iterable[dict]) -> Replay:
    records = list(records)
    if not records or records[0]["e"] != "config":
        raise Unsupported("the trace does not start with its config record")
    head = records[0]
    config = _config_of(head)
    # decay as the trace says: switched only by the engine's config records
    policy = Thunder(config=config, tick_s=head["tick_s"], decay="on" if config.decay else "off")
    engine = _Stub(head["block"])
    policy.attach(engine)
    return _Replayer(policy, engine, head["block"]).run(records[1:])


def _config_of(record: dict) -> SchedulerConfig:
    fields = {f.name for f in dataclasses.fields(SchedulerConfig)}
    return SchedulerConfig(**{k: v for k, v in record.items() if k in fields})


class _Replayer:
    def __init__(self, policy: Thunder, engine: _Stub, block: int):
        self.policy, self.engine, self.block = policy, engine, block
        self.calls: dict[str, SimpleNamespace] = {}  # rid -> call held or running
        self.released: set[str] = set()  # held calls the simulator let go, not yet admitted
        self.out = Replay()

    def run(self, records: list[dict]) -> Replay:
        for record in records:
            self.out.events += 1
            if record["e"] not in KINDS:
                raise Unsupported(f"line {record['_line']}: unknown record kind {record['e']!r}")
            getattr(self, "_" + record["e"])(record)
        return self.out

    def _call_of(self, record: dict) -> SimpleNamespace:
        return SimpleNamespace(program_id=record["p"], rid=record["rid"],
                               prompt_chain=block_keys(record["tokens"], self.block),
                               output_tokens=record["headroom"], arrived_at=record["t"],
                               full_chain=None)

    def _held(self, record: dict) -> None:
        if record.get("waited"):
            raise Unsupported(f"line {record['_line']}: a call a router had held before (its "
                              "program moved here), which the simulator does not model")
        call = self._call_of(record)
        self.calls[call.rid] = call
        if self.policy.on_arrive(call, record["t"]):
            self.out.differ(record, f"call {call.rid} of {call.program_id}", "held", "admitted")

    def _call(self, record: dict) -> None:
        rid, pid = record["rid"], record["p"]
        if rid in self.released:  # let go by a resume: the engine's phase clock from now on
            self.released.discard(rid)
            self.policy.programs[pid].phase_since = record["t"]
            return
        if rid in self.calls:
            self.out.differ(record, f"call {rid} of {pid}", "let go", "still held")
            return
        call = self._call_of(record)
        self.calls[rid] = call
        if not self.policy.on_arrive(call, record["t"]):
            self.out.differ(record, f"call {rid} of {pid}", "admitted", "held")

    def _finish(self, record: dict) -> None:
        call = self.calls.pop(record["rid"], None)
        if call is None:
            raise Unsupported(f"line {record['_line']}: finish of {record['rid']}, a call the "
                              "trace never admitted (answered while held?)")
        call.full_chain = block_keys(record["tokens"], self.block)
        if record["p"] in self.policy.programs:
            self.policy.on_finish(call, record["t"])

    def _config(self, record: dict) -> None:
        self.policy.config = _config_of(record)

    def _end(self, record: dict) -> None:
        self.policy.ended(record["p"], record["t"])

    def _pause(self, record: dict) -> None:
        self._status(record, PAUSED)

    def _resume(self, record: dict) -> None:
        self._status(record, ACTIVE)

    def _status(self, record: dict, status: str) -> None:
        if record.get("operator"):
            raise Unsupported(f"line {record['_line']}: an operator's {record['e']} of "
                              f"{record['p']}: the replay covers the scheduler's own decisions")
        program = self.policy.programs.get(record["p"])
        if program is None or program.status != status:
            self.out.differ(record, f"{record['e']} of {record['p']}", status,
                            None if program is None else program.status)
        elif abs(program.status_since - record["t"]) <= TIME_TOLERANCE_S:
            program.status_since = record["t"]  # the engine's clock read at the change

    def _check(self, record: dict) -> None:
        self.out.checks += 1
        t = record["t"]
        sim_views = {v.program_id: dataclasses.asdict(v) for v in self.policy._views(t)}
        engine_views = {v["program_id"]: v for v in record["views"]}
        self._compare_views(record, engine_views, sim_views)
        policy = self.policy
        decision = policy.decision(t, record["untagged"])
        held = {id(c) for p in policy.programs.values() for c in p.held}
        released = policy.apply(decision, t) if decision is not None else []
        for key in SETS:
            self.out.decided[key] += len(record[key])
            ours = sorted(getattr(decision, key)) if decision is not None else []
            if sorted(record[key]) != ours:
                self.out.differ(record, f"decision ({record['cause']}): {key}",
                                sorted(record[key]), ours)
        self.released.update(call.rid for call in released if id(call) in held)

    def _compare_views(self, record: dict, engine: dict, sim: dict) -> None:
        for pid in sorted(set(engine) | set(sim)):
            a, b = engine.get(pid), sim.get(pid)
            if a is None or b is None:
                self.out.differ(record, f"view of {pid}", a, b)
                continue
            for name, value in a.items():
                other = b.get(name)
                if name in TIME_FIELDS:
                    if abs(value - other) > TIME_TOLERANCE_S:
                        self.out.differ(record, f"view of {pid}: {name}", value, other)
                elif value != other:
                    self.out.differ(record, f"view of {pid}: {name}", value, other)
