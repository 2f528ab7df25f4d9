"""Scheduler-process side of programs: the one program table and the hooks that feed it.

A tagged request's arrival makes its program reasoning; its final output (or an
abort while queued) may make it acting; the control requests of the HTTP
process read and change the table; a tick ends idle programs.
"""

from __future__ import annotations

import functools
import json
import time
from typing import NamedTuple

from sglang.utils import TypeBasedDispatcher

from thunderagent_sglang import compat, config
from thunderagent_sglang.engine import (
    hooks, offload, program_ipc, program_pausing, program_retraction, program_tree)
from thunderagent_sglang.engine.logs import get_logger
from thunderagent_sglang.engine.program_ipc import ProgramControlReq, reply
from thunderagent_sglang.engine.program_tree import RESIDENCY
from thunderagent_sglang.program import misses
from thunderagent_sglang.program.linking import PrefixLinker
from thunderagent_sglang.policy.demand import DemandLedger, block_keys
from thunderagent_sglang.policy.eviction import ProgramState, program_key
from thunderagent_sglang.program.record import Phase, Status, UnknownProgram
from thunderagent_sglang.program.table import ProgramTable

TICK_S = 1.0
# Demand is counted in blocks of whole pages, or of 16 tokens with page size 1
# (then two contexts that part inside a block count its common tokens twice).
MIN_DEMAND_BLOCK = 16
_state: dict = {"table": None, "last_tick": 0.0, "page_size": 1, "linker": None, "ledger": None}


def guarded(hook):
    """Our bookkeeping must never take serving down: log a failure and go on."""

    @functools.wraps(hook)
    def safe(*args, **kwargs):
        return _guard(hook, *args, **kwargs)

    return safe


def _guard(fn, *args, **kwargs):
    """Call ``fn``; on failure log it loudly and answer None (serving continues)."""
    try:
        return fn(*args, **kwargs)
    except Exception:  # noqa: BLE001 - logged loudly, serving continues
        get_logger().exception("ThunderAgent: %s failed; program state may be off", fn.__name__)
        return None


def table() -> ProgramTable:
    return _state["table"]


def install(cfg: config.ThunderAgentConfig) -> None:
    _state["table"] = ProgramTable(idle_expiry_s=cfg.idle_expiry_s, max_terminated=cfg.max_terminated)
    _state["linker"] = PrefixLinker() if cfg.link_untagged else None
    _state["ledger"] = DemandLedger()
    _state["half_life_s"] = cfg.decay_half_life_s
    _state["finish_chain"] = {}
    _state["arrival_chain"] = {}
    program_pausing.install(cfg, _state["table"], _state["ledger"], sidecar_notify())
    program_ipc.register_types()
    hooks.install(compat.SCHEDULER_INIT_REQUEST_DISPATCHER, _add_control_dispatch, "after")
    hooks.install(compat.SCHEDULER_HANDLE_GENERATE_REQUEST, _on_arrival, "around")
    hooks.install(compat.SCHEDULER_ABORT_REQUEST, _on_abort_request, "before")
    hooks.install(compat.OUTPUT_STREAMER_STREAM_OUTPUT, _on_stream_output, "after")
    hooks.install(compat.SCHEDULER_SEND_ABORT_OUTPUT, _on_abort_output, "after")
    hooks.install(compat.SCHEDULER_PROCESS_INPUT_REQUESTS, _on_loop, "after")
    if cfg.scheduler == "thunder":
        hooks.install(compat.DECODE_RETRACTION_ORDER, program_retraction.reorder, "around")


def sidecar_notify():
    """The sidecar's event sender, when this build has one (else events go nowhere)."""
    try:
        from thunderagent_sglang.engine import sidecar_events
    except ImportError:
        return None
    return sidecar_events.notify


def _add_control_dispatch(result, scheduler):
    _state["scheduler"] = scheduler
    _state["page_size"] = getattr(scheduler, "page_size", None) or 1
    program_pausing.set_capacity(scheduler.max_total_num_tokens)
    scheduler._request_dispatcher += TypeBasedDispatcher([(ProgramControlReq, handle_control)])


class Arrival(NamedTuple):
    program_id: str
    parent_id: str | None = None
    final: bool = False
    priority: int | None = None


def take_identity(sampling_params) -> Arrival | None:
    """Remove our keys from custom_params; the call's program identity or None."""
    params = getattr(sampling_params, "custom_params", None)
    if not isinstance(params, dict) or program_ipc.ID_KEY not in params:
        return None
    program_id = params.pop(program_ipc.ID_KEY)
    parent_id = params.pop(program_ipc.PARENT_KEY, None)
    final = bool(params.pop(program_ipc.FINAL_KEY, False))
    priority = params.pop(program_ipc.PRIORITY_KEY, None)
    if not params:
        sampling_params.custom_params = None
    return Arrival(program_id, parent_id, final, priority)


def _on_arrival(original, scheduler, recv_req, **kwargs):
    """AROUND ``handle_generate_request``: hold a paused program's call, else admit it."""
    arrival = _guard(_identify, recv_req)
    max_new = _max_new(recv_req)
    if arrival is None:  # untagged: never held; its prompt and output use the pool
        program_pausing.admitted(recv_req.rid, None, max_new, len(recv_req.input_ids or ()))
        return original(scheduler, recv_req, **kwargs)
    admit = functools.partial(_admit, original, scheduler, recv_req, kwargs, arrival, max_new)
    if _guard(_maybe_hold, arrival, recv_req, max_new, admit):
        _guard(program_pausing.check, "arrival")
        return None
    result = admit()
    _guard(program_pausing.check, "arrival")
    return result


def _identify(recv_req) -> Arrival | None:
    return take_identity(recv_req.sampling_params) or _linked_identity(recv_req)


def _maybe_hold(arrival: Arrival, recv_req, max_new: int, admit) -> bool:
    program_pausing.set_priority(arrival.program_id, arrival.priority)
    if not program_pausing.should_hold(arrival.program_id):
        return False
    _arrival_demand(arrival.program_id, recv_req, active=False)
    program_pausing.hold(arrival.program_id, recv_req.rid, max_new, admit)
    return True


def _admit(original, scheduler, recv_req, kwargs, arrival: Arrival, max_new: int,
           track: bool = True):
    """Hand a call to SGLang; ``track``: our bookkeeping first (not for a call that an abort
    or a shutdown answers at once)."""
    if track:
        _guard(_track_arrival, arrival, recv_req, max_new)
    return original(scheduler, recv_req, **kwargs)


def _track_arrival(arrival: Arrival, recv_req, max_new: int) -> None:
    try:
        program = table().on_arrival(arrival.program_id, recv_req.rid,
                                     parent_id=arrival.parent_id, final=arrival.final)
    except ValueError as exc:  # a duplicate rid: SGLang answers it; we do not track it
        get_logger().warning("ThunderAgent: request %s not tracked: %s", recv_req.rid, exc)
        return
    program_pausing.admitted(recv_req.rid, arrival.program_id, max_new)
    _arrival_demand(arrival.program_id, recv_req, active=program.status is Status.ACTIVE)


def _max_new(recv_req) -> int:
    return getattr(recv_req.sampling_params, "max_new_tokens", None) or 0


def _linked_identity(recv_req) -> Arrival | None:
    linker = _state["linker"]
    if linker is None or not recv_req.input_ids:
        return None
    program_id = linker.find(recv_req.input_ids)
    return None if program_id is None else Arrival(program_id)


def _arrival_demand(program_id: str, recv_req, active: bool) -> None:
    """A call's prompt is its program's context from now on (demand, shared prefixes once)."""
    prompt = recv_req.input_ids
    if not prompt:
        return
    ledger = _state["ledger"]
    program = table().live_program(program_id)
    previous = program.last_sequence if program is not None else None
    prev_chain = ledger.chain_of(program_id)
    extends = (previous is not None and prev_chain is not None
               and prev_chain is _state["finish_chain"].get(program_id)
               and len(prompt) >= len(previous)
               and misses.common_prefix_len(previous, misses.as_tokens(prompt)) == len(previous))
    chain = block_keys(prompt, _block_size(), prev=prev_chain if extends else None)
    ledger.set_context(program_id, chain)
    ledger.set_active(program_id, active)
    _state["arrival_chain"][recv_req.rid] = chain


def _block_size() -> int:
    return _state["page_size"] if _state["page_size"] > 1 else MIN_DEMAND_BLOCK


def _on_abort_request(scheduler, recv_req):
    """BEFORE ``abort_request``: held calls it names go to SGLang first, so its own abort
    answers them (a client that went away loses nothing else)."""
    _guard(program_pausing.release_for_abort, recv_req.rid or "", bool(recv_req.abort_all))


def _set_demand(program, tokens: list[int], rid: str) -> None:
    """The program's latest context in the demand ledger. When the ledger still holds this
    call's prompt (set at its arrival), the context extends it: only new tokens are hashed."""
    ledger = _state["ledger"]
    previous = ledger.chain_of(program.program_id)
    arrived = _state["arrival_chain"].pop(rid, None)
    extends = previous is not None and previous is arrived
    chain = block_keys(tokens, _block_size(), prev=previous if extends else None)
    ledger.set_context(program.program_id, chain)
    ledger.set_active(program.program_id, program.status is Status.ACTIVE)
    _state["finish_chain"][program.program_id] = chain


def eviction_key(program_id: str):
    """The eviction rank of a live program's KV (policy.eviction), or None."""
    program = table().live_program(program_id)
    if program is None:
        return None
    state = ProgramState(
        paused=program.status is Status.PAUSED,
        reasoning=program.phase is Phase.REASONING,
        context_tokens=program.context_tokens,
        tool_seconds=time.monotonic() - program.phase_since,
    )
    return program_key(state, _state["half_life_s"])


def _remember(program) -> None:
    """Keep (or drop, once ended) what later calls and the accounting need of a program."""
    if program is not None and not program.live:
        pid = program.program_id
        if pid in _state["ledger"]:
            _state["ledger"].remove(pid)
        _state["finish_chain"].pop(pid, None)
        program_tree.retire(pid)
        program_pausing.forget(pid)
        program_pausing.S.notify(pid, "terminated")
        program_pausing.release_held(pid)  # its next calls start a new incarnation
    linker = _state["linker"]
    if linker is None or program is None:
        return
    if program.live and program.last_sequence is not None:
        linker.remember(program.program_id, program.last_full_sequence)
    elif not program.live:
        linker.forget(program.program_id)


@guarded
def _on_stream_output(result, streamer, reqs, return_logprob, skip_req=None):
    ended = False
    for req in reqs:
        if req is not skip_req and req.finished():
            ended = True
            program_pausing.finished(req.rid)
            _guard(_finish, req)
    if ended:
        program_pausing.check("finish")


@guarded
def _on_abort_output(result, scheduler, abort_req, req):
    program_pausing.finished(req.rid)
    _finish(req)


def _finish(req) -> None:
    program = table().program_for(req.rid)
    if program is None:
        _state["arrival_chain"].pop(req.rid, None)
        return
    # One conversion of the call's tokens; the prompt is a view of it.
    tokens = misses.kv_tokens(req.origin_input_ids, req.output_ids)
    sequence = misses.as_tokens(tokens)
    prompt = sequence[:len(req.origin_input_ids)]
    previous = program.last_sequence
    common = None if previous is None else misses.common_prefix_len(previous, prompt)
    cached = req.cached_tokens or 0
    missed = misses.classify(previous, prompt, cached, _state["page_size"], common=common)
    _set_demand(program, tokens, req.rid)
    RESIDENCY.drop_head(program.program_id, req.rid)  # its final checkpoint moved it to "last"
    program.last_sequence = sequence
    if _state["linker"] is not None:
        program.last_full_sequence = list(req.origin_input_ids) + list(req.output_ids)
    program = table().on_finish(
        req.rid,
        prompt_tokens=len(prompt),
        cached_tokens=cached,
        output_tokens=len(req.output_ids),
        missed=missed,
    )
    _remember(program)
    if program is not None and program.release_cause is not None:
        get_logger().info("ThunderAgent: program %s ended (%s)", program.program_id, program.release_cause)


@guarded
def _on_loop(result, scheduler, recv_reqs):
    now = time.monotonic()
    if now - _state["last_tick"] >= TICK_S:
        _state["last_tick"] = now
        _expire_idle()
    program_pausing.maybe_tick()


def _expire_idle() -> None:
    for program in table().expire_idle():
        _remember(program)
        get_logger().info("ThunderAgent: program %s ended (idle)", program.program_id)


def handle_control(req: ProgramControlReq):
    """Answer one control request from the HTTP process (runs in the scheduler loop)."""
    handler = _OPS.get(req.op)
    if handler is None:
        return reply(400, {"error": f"unknown program operation {req.op!r}"})
    try:
        _expire_idle()  # an idle scheduler may not have ticked for a while
        return handler(table(), req.program_id, json.loads(req.payload))
    except UnknownProgram as exc:
        return reply(404, {"error": str(exc)})
    except ValueError as exc:
        return reply(400, {"error": str(exc)})
    except Exception as exc:  # noqa: BLE001 - answer, never crash the scheduler
        get_logger().exception("ThunderAgent: program operation %s failed", req.op)
        return reply(500, {"error": f"program operation {req.op!r} failed: {exc}"})


def _list(t, program_id, payload):
    return reply(200, {"programs": [_record(t, p) for p in t.programs()],
                       "demand_tokens": _state["ledger"].demand_tokens(),
                       "resident_tokens": RESIDENCY.active_footprint(),
                       "tagged_resident_tokens": RESIDENCY.tagged_tokens(),
                       "scheduler": _scheduler_stats()})


def _get(t, program_id, payload):
    return reply(200, _record(t, t.get(program_id)))


def _release(t, program_id, payload):
    program = t.release(program_id)
    _remember(program)
    return reply(200, {**_record(t, program), "released": program.release_cause is not None})


def _tool(t, program_id, payload):
    return reply(200, _record(t, t.tool_event(program_id, payload.get("event"), payload.get("expected_s"))))


def _pause(t, program_id, payload):
    """Operator pause: held until the operator resumes it (the scheduler leaves it alone)."""
    was_paused = t.get(program_id).status is Status.PAUSED
    program = t.pause(program_id)
    if not was_paused:
        program_pausing.operator_pause(program)
    else:
        program_pausing.S.operator.add(program_id)
    return reply(200, _record(t, program))


def _resume(t, program_id, payload):
    was = t.get(program_id)
    was_paused, decision = was.status is Status.PAUSED, was.kv_decision
    program = t.resume(program_id)
    if was_paused:
        program_pausing.operator_resume(program, decision)
    return reply(200, _record(t, program))


def _stats(t, program_id, payload):
    return reply(200, {"counters": t.counters, "live": t.live_count_by(),
                       "demand_tokens": _state["ledger"].demand_tokens(),
                       "resident_tokens": RESIDENCY.active_footprint(),
                       "kv": offload.stats(), "scheduler": _scheduler_stats()})


def _shutdown(t, program_id, payload):
    """The HTTP process got SIGTERM: answer held calls 503 now rather than drain them."""
    return reply(200, {"answered": program_pausing.shut_down(_answer_unavailable)})


SHUTDOWN_MESSAGE = ("The server is shutting down; this program was paused and its call had "
                    "not started. Retry against a running server.")


def _answer_unavailable(item) -> None:
    """Hand the held call to SGLang without our bookkeeping and abort it there with 503."""
    from sglang.srt.managers.io_struct import AbortReq
    from sglang.srt.managers.schedule_batch import FINISH_ABORT

    item.admit(False)
    reason = FINISH_ABORT(SHUTDOWN_MESSAGE, status_code=503).to_json()
    _state["scheduler"].abort_request(AbortReq(rid=item.rid, finished_reason=reason))


def _scheduler_stats() -> dict:
    return {**program_pausing.stats(), **program_retraction.stats()}


def _record(t, program) -> dict:
    """The table's record plus the ledger's figures."""
    ledger = _state["ledger"]
    held = program.live and program.program_id in ledger
    pid = program.program_id
    return {**t.record(program), **program_pausing.record_fields(pid),
            "resident_tokens": RESIDENCY.resident_tokens(pid) if program.live else 0,
            "host_tokens": RESIDENCY.host_tokens(pid) if program.live else 0,
            "unique_tokens": ledger.unique_tokens(pid) if held else 0}


_OPS = {
    "shutdown": _shutdown,
    "list": _list,
    "get": _get,
    "release": _release,
    "tool": _tool,
    "pause": _pause,
    "resume": _resume,
    "stats": _stats,
}
