"""The program routes' operations, run in the scheduler loop on the runtime.

``handle(runtime, message)`` answers one typed message of ``program_ipc`` with a
``ProgramReply``: 404 for an unknown program, 400 for a bad argument, 500 (logged, with no
source locations in the body) if an operation fails; never an exception into SGLang's loop.
"""

from __future__ import annotations

import hashlib

import orjson

from thunderagent_sglang.engine import program_ipc as ipc
from thunderagent_sglang.engine.logs import get_logger
from thunderagent_sglang.program.record import ProgramBusy, UnknownProgram


def handle(runtime, msg) -> ipc.ProgramReply:
    op = _OPS[type(msg)]
    try:
        runtime.expire_idle()  # an idle scheduler may not have ticked for a while
        return ipc.reply(200, op(runtime, msg))
    except UnknownProgram as exc:
        return ipc.reply(404, {"error": str(exc)})
    except ProgramBusy as exc:
        return ipc.reply(409, {"error": str(exc)})
    except ValueError as exc:
        return ipc.reply(400, {"error": str(exc)})
    except Exception as exc:  # noqa: BLE001 - answer, never crash the scheduler
        get_logger().exception("ThunderAgent: program operation %s failed", type(msg).__name__)
        return ipc.reply(500, {"error": f"program operation {type(msg).__name__} failed "
                                        f"({type(exc).__name__}); the server log has details"})


def record(runtime, program) -> dict:
    """The table's record plus the scheduler's and the cache's figures."""
    pid, live = program.program_id, program.live
    in_ledger = live and pid in runtime.ledger
    return {**runtime.table.record(program), **runtime.scheduler.record_fields(pid),
            "resident_tokens": runtime.residency.resident_tokens(pid) if live else 0,
            "host_tokens": runtime.residency.host_tokens(pid) if live else 0,
            "unique_tokens": runtime.ledger.unique_tokens(pid) if in_ledger else 0}


def waiting_record(runtime, program_id: str) -> dict:
    """A program not admitted yet (its first calls are held): no table record exists."""
    return {"program_id": program_id, "status": "waiting",
            "context_tokens": runtime.ledger.context_tokens(program_id)
            if program_id in runtime.ledger else 0,
            **runtime.scheduler.record_fields(program_id)}


def _not_admitted(runtime) -> list[str]:
    table = runtime.table
    return [pid for pid in runtime.scheduler.held.programs() if table.live_program(pid) is None]


def _list(runtime, msg: ipc.ListPrograms) -> dict:
    table = runtime.table
    programs = table.live_programs() if msg.live_only else table.programs()  # O(live) polls
    return {"programs": [record(runtime, p) for p in programs]
            + [waiting_record(runtime, pid) for pid in _not_admitted(runtime)],
            "demand_tokens": runtime.ledger.demand_tokens(),
            "resident_tokens": runtime.residency.active_footprint(),
            "tagged_resident_tokens": runtime.residency.tagged_tokens(),
            "scheduler": runtime.scheduler.stats(),
            "prefill_tokens_per_s": runtime.offload.recompute_rate()}


def _get(runtime, msg: ipc.GetProgram) -> dict:
    pid = msg.program_id
    if runtime.table.live_program(pid) is None and pid in runtime.scheduler.held:
        return waiting_record(runtime, pid)
    return record(runtime, runtime.table.get(pid))


def _release(runtime, msg: ipc.ReleaseProgram) -> dict:
    program = runtime.release(msg.program_id)
    return {**record(runtime, program), "released": program.release_cause is not None}


def _migrate(runtime, msg: ipc.MigrateProgram) -> dict:
    program, handed = runtime.migrate(msg.program_id)
    body = record(runtime, program) if program is not None else {
        "program_id": msg.program_id, "status": "terminated", "release_cause": "migrated"}
    return {**body, "handed_over": handed}


def _tool(runtime, msg: ipc.ToolHint) -> dict:
    program = runtime.tool_event(msg.program_id, msg.event, msg.expected_s, msg.tool)
    runtime.events.add("tool", msg.program_id, event=msg.event, tool=msg.tool,
                       expected_s=msg.expected_s)
    return record(runtime, program)


def _environments(runtime, msg: ipc.EnvironmentReport) -> dict:
    program = runtime.table.set_environments(msg.program_id, msg.environments)
    return {"program_id": program.program_id, "environments": len(program.environments)}


def digest(runtime) -> dict:
    """What every tensor-parallel rank must agree on, hashed: each program's record, residency
    and demand, the held calls, the table's and offloader's counters, the agreed clock."""
    table = runtime.table
    state = {
        "programs": [record(runtime, p) for p in table.programs()],
        "held": [[item.program_id, item.rid, item.since]
                 for item in runtime.scheduler.held.items()],
        "demand_tokens": runtime.ledger.demand_tokens(),
        "resident_tokens": runtime.residency.active_footprint(),
        "tagged_resident_tokens": runtime.residency.tagged_tokens(),
        "counters": table.counters,
        "kv": runtime.offload.stats(),
        "clock": runtime.clock(),
    }
    text = orjson.dumps(state, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    return {"rank": runtime.consensus.rank, "ranks": runtime.consensus.size,
            "steps": runtime.consensus.steps, "digest": hashlib.sha256(text).hexdigest(),
            "programs": len(state["programs"]), "held": len(state["held"]),
            "resident_tokens": state["resident_tokens"]}


def _digest(runtime, msg: ipc.ProgramDigest) -> dict:
    """Every rank logs its digest (tensor parallelism: the ranks' lines must agree)."""
    out = digest(runtime)
    get_logger().info("ThunderAgent: digest rank %d of %d after %d steps: %s (programs %d, "
                      "held %d, resident tokens %d)", out["rank"], out["ranks"], out["steps"],
                      out["digest"], out["programs"], out["held"], out["resident_tokens"])
    return out


def _events(runtime, msg: ipc.ProgramEvents) -> dict:
    return runtime.events.since(msg.since, msg.limit)


def _pause(runtime, msg: ipc.PauseProgram) -> dict:
    """Operator pause: held until the operator resumes it (the scheduler leaves it alone)."""
    program = runtime.table.get_live(msg.program_id)
    runtime.pause(program, "operator", operator=True)
    return record(runtime, program)


def _resume(runtime, msg: ipc.ResumeProgram) -> dict:
    program = runtime.table.get_live(msg.program_id)
    runtime.resume(program, "operator", operator=True)
    return record(runtime, program)


def _stats(runtime, msg) -> dict:
    table = runtime.table
    return {"counters": table.counters, "live": table.live_count_by(),
            "demand_tokens": runtime.ledger.demand_tokens(),
            "resident_tokens": runtime.residency.active_footprint(),
            "kv": runtime.offload.stats(), "scheduler": runtime.scheduler.stats(),
            "tools": table.tool_times.stats(),
            "sidecar_events": (runtime.events_out.stats() if runtime.events_out is not None
                               else None)}


def _shut_down(runtime, msg) -> dict:
    """The HTTP process got SIGTERM: answer held calls 503 now rather than drain them."""
    return {"answered": runtime.scheduler.shut_down(runtime.answer_unavailable)}


def _drain(runtime, msg: ipc.DrainHeld) -> dict:
    released = runtime.scheduler.drain(msg.on)
    return {"released": released, "draining": runtime.scheduler.draining}


_OPS = {
    ipc.ListPrograms: _list,
    ipc.GetProgram: _get,
    ipc.ReleaseProgram: _release,
    ipc.ToolHint: _tool,
    ipc.EnvironmentReport: _environments,
    ipc.PauseProgram: _pause,
    ipc.MigrateProgram: _migrate,
    ipc.ResumeProgram: _resume,
    ipc.ProgramStats: _stats,
    ipc.ShutDownHeld: _shut_down,
    ipc.DrainHeld: _drain,
    ipc.ProgramEvents: _events,
    ipc.ProgramDigest: _digest,
}
