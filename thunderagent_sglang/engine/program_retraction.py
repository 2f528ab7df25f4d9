"""Decode retraction in program order (glue for ``policy.retraction``).

When the next decode step does not fit, SGLang retracts running requests, popping them from
the end of ``ScheduleBatch._get_decode_retraction_order``. The runtime's AROUND hook calls
``reorder``: SGLang's order stays the tie-break and the order of untagged requests, and the
rest is reordered: requests of programs marked for pause first, then the lowest-priority,
smallest program's (``policy.retraction``). With no tagged request running, SGLang's order is
returned unchanged.
"""

from __future__ import annotations

from thunderagent_sglang.engine.logs import get_logger
from thunderagent_sglang.policy.retraction import RunningRequest, retraction_order


def reorder(runtime, original, reqs):
    keep_first = original(reqs)
    try:
        return _program_order(runtime, reqs, keep_first)
    except Exception:  # noqa: BLE001 - SGLang's own order is always a safe answer
        get_logger().exception("ThunderAgent: decode retraction order failed; SGLang's kept")
        return keep_first


def _program_order(runtime, reqs, keep_first: list[int]) -> list[int]:
    program_of = runtime.table.program_for
    running = [RunningRequest(_program_id(program_of(r.rid)), len(r.origin_input_ids),
                              len(r.output_ids)) for r in reqs]
    if all(r.program_id is None for r in running):
        return keep_first
    views = runtime.scheduler.snapshot(runtime.clock())
    retract_first = retraction_order(running, views, default_order=keep_first[::-1])
    runtime.scheduler.counters["retraction_orders"] += 1
    get_logger().debug("ThunderAgent scheduler: decode retraction order (first out first): %s",
                       [running[i].program_id or reqs[i].rid for i in retract_first])
    return retract_first[::-1]


def _program_id(program) -> str | None:
    return None if program is None else program.program_id
