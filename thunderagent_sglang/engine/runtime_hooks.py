"""The runtime's SGLang hooks: bound methods installed on the targets ``compat`` lists.

A mixin of ``ProgramRuntime`` (kept apart so that each file stays short): every method here
reads SGLang's objects (a ``TokenizedGenerateReqInput``, a ``Req``, the ``Scheduler``) and
calls the runtime. None may raise into SGLang: a failure is logged and serving goes on.
"""

from __future__ import annotations

import functools
import math
from http import HTTPStatus

from sglang.srt.managers.io_struct import AbortReq
from sglang.srt.managers.schedule_batch import FINISH_ABORT
from sglang.utils import TypeBasedDispatcher

from thunderagent_sglang import compat
from thunderagent_sglang.engine import controls, hooks, program_ipc, program_retraction
from thunderagent_sglang.engine.decision_trace import open_trace
from thunderagent_sglang.engine.guards import guard, guarded

SHUTDOWN_MESSAGE = ("The server is shutting down; this program was paused and its call had "
                    "not started. Retry against a running server.")
MIGRATED_MESSAGE = ("thunderagent: migrated: this program moved to another replica before its "
                    "call started here; send the call again through the router")


class SchedulerHooks:
    def install(self) -> None:
        """Register every hook of the scheduler process (before SGLang applies them)."""
        program_ipc.register_types()
        self.consensus.install()
        hooks.install(compat.SCHEDULER_INIT_REQUEST_DISPATCHER, self.on_dispatcher_built, "after")
        hooks.install(compat.SCHEDULER_HANDLE_GENERATE_REQUEST, self.on_generate_request,
                      "around")
        hooks.install(compat.SCHEDULER_ABORT_REQUEST, self.on_abort_request, "before")
        hooks.install(compat.OUTPUT_STREAMER_STREAM_OUTPUT, self.on_stream_output, "after")
        hooks.install(compat.SCHEDULER_SEND_ABORT_OUTPUT, self.on_abort_output, "after")
        hooks.install(compat.SCHEDULER_PROCESS_INPUT_REQUESTS, self.on_loop, "after")
        hooks.install(compat.WEIGHTS_RELEASE_MEMORY, self.on_memory_released, "after")
        hooks.install(compat.WEIGHTS_RESUME_MEMORY, self.on_memory_resumed, "after")
        if self.cfg.scheduler == "thunder":
            hooks.install(compat.DECODE_RETRACTION_ORDER, self.retraction_order, "around")
            if self.cfg.decay == "auto":
                hooks.install(compat.SCHEDULER_RUN_BATCH, self.decode_meter.time_batch, "before")

    def on_dispatcher_built(self, result, scheduler):
        """AFTER ``init_request_dispatcher``: the pool's size, and our control messages."""
        self.sglang = scheduler
        self.consensus.attach()
        if not self.consensus.leader:  # one rank speaks to the sidecar
            self.notify = lambda program_id, event: None
        self.page_size = getattr(scheduler, "page_size", None) or 1
        self.trace = open_trace(self.cfg.decision_trace, self.consensus.leader)
        self.scheduler.set_capacity(scheduler.max_total_num_tokens, self.offload.host_tokens())
        scheduler._request_dispatcher += TypeBasedDispatcher(
            [(cls, functools.partial(controls.handle, self)) for cls in program_ipc.REQUESTS])

    def on_generate_request(self, original, scheduler, recv_req, **kwargs):
        """AROUND ``handle_generate_request``: hold a paused program's call, else admit it."""
        arrival = guard(self.identify, recv_req)
        max_new = getattr(recv_req.sampling_params, "max_new_tokens", None) or 0
        if arrival is None:  # untagged: never held; its prompt and output use the pool
            guard(self.track_call, recv_req.rid, None,
                  max_new + len(recv_req.input_ids or ()))
            return original(scheduler, recv_req, **kwargs)
        if len(recv_req.input_ids or ()) >= getattr(scheduler, "max_req_input_len", math.inf):
            # SGLang refuses it at once (HTTP 400), as it would untagged: never hold it, and
            # leave no program behind. (With --allow-auto-truncate it runs, untracked.)
            return original(scheduler, recv_req, **kwargs)
        admit = functools.partial(self._admit, original, scheduler, recv_req, kwargs, arrival,
                                  max_new)
        held = guard(self._maybe_hold, arrival, recv_req, max_new, admit)
        result = None if held else admit()
        guard(self.scheduler.check_if_needed, "arrival")
        if held:  # a new program's call the decision left waiting beyond the bound: 429
            guard(self.scheduler.refuse_over_bound, recv_req.rid)
        return result

    def _maybe_hold(self, arrival, recv_req, max_new: int, admit) -> bool:
        """True when the call was held, or refused (429) because as many calls as the bound
        allows are held: at once for a paused program (its context stays as it was); a new
        program's call is held first, as the decision may admit it at once."""
        self.scheduler.set_priority(arrival.program_id, arrival.priority)
        if self.scheduler.draining:
            self.scheduler.resume_for_drain(arrival.program_id)
            return False
        if not self.scheduler.should_hold(arrival.program_id):
            return False
        if self.scheduler.full() and self.table.live_program(arrival.program_id) is not None:
            self.scheduler.refuse(admit, recv_req.rid)
            return True
        chain = self.set_prompt(arrival.program_id, recv_req)
        self.scheduler.hold(arrival.program_id, recv_req.rid, max_new, admit, chain,
                            prompt=recv_req.input_ids, waited_s=arrival.held_s)
        return True

    def _admit(self, original, scheduler, recv_req, kwargs, arrival, max_new: int,
               track: bool = True, chain=None):
        """Hand a call to SGLang; ``track``: our bookkeeping first (not for a call that an
        abort or a shutdown answers at once); ``chain``: its prompt's, hashed when held."""
        if track:
            guard(self.track_arrival, arrival, recv_req, max_new, chain)
        return original(scheduler, recv_req, **kwargs)

    def on_abort_request(self, scheduler, recv_req):
        """BEFORE ``abort_request``: held calls it names go to SGLang first, so its own abort
        answers them (a client that went away loses nothing else)."""
        guard(self.scheduler.release_for_abort, recv_req.rid or "", bool(recv_req.abort_all))

    @guarded
    def on_stream_output(self, result, streamer, reqs, return_logprob, skip_req=None):
        ended, programs = False, []
        for req in reqs:
            if req is not skip_req and req.finished():
                ended = True
                program = guard(self.finish, req)
                if program is not None:
                    programs.append(program)
        if ended:
            self.scheduler.check_if_needed("finish")
        if programs:
            guard(self.tool_boundaries, programs)

    @guarded
    def on_abort_output(self, result, scheduler, abort_req, req):
        self.finish(req)

    @guarded
    def on_loop(self, result, scheduler, recv_reqs):
        self.tick()

    @guarded
    def on_memory_released(self, result, updater, recv_req):
        """AFTER SGLang released its memory (RL): no decision, no held call let go, until
        it is resumed."""
        self.scheduler.memory_released()

    @guarded
    def on_memory_resumed(self, result, updater, recv_req):
        """AFTER a resume: once SGLang holds nothing released (its ``offload_tags``)."""
        if not getattr(updater, "offload_tags", None):
            self.scheduler.memory_resumed()

    def retraction_order(self, original, reqs):
        """AROUND ``ScheduleBatch._get_decode_retraction_order`` (a staticmethod: no self)."""
        return program_retraction.reorder(self, original, reqs)

    def answer_unavailable(self, item) -> None:
        """Hand a held call to SGLang without our bookkeeping and abort it there with 503."""
        self.answer_now(item.admit, item.rid, 503, SHUTDOWN_MESSAGE)

    def answer_migrated(self, item) -> None:
        """A held call of a program moved by a router: 421 (not started here; send it again
        through the router, which does so by itself)."""
        self.answer_now(item.admit, item.rid, 421, MIGRATED_MESSAGE)

    def answer_now(self, admit, rid: str, status: int, message: str) -> None:
        """Hand a call to SGLang without our bookkeeping and abort it there: its client gets
        ``status`` and ``message`` (a streamed call: as the stream's error event)."""
        admit(False)
        reason = FINISH_ABORT(message, status_code=HTTPStatus(status)).to_json()
        self.sglang.abort_request(AbortReq(rid=rid, finished_reason=reason))
