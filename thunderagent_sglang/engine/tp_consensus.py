"""Tensor-parallel ranks that take every program decision alike.

SGLang runs one scheduler per tensor-parallel rank. Rank 0 reads the requests and broadcasts
them every step, so every rank sees the same requests, control messages and batch results in
the same order, and SGLang's own decisions come out the same. Ours (holds, pauses, marks,
resumes, keep/offload/drop, eviction and retraction order, idle expiry) are functions of that
shared program state and of two inputs that are not shared: the clock and measured rates
(the host link, the prefill rate, the decode steps' shared fraction). So rank 0's clock
reading and measures ride SGLang's own per-step broadcast as one local request of rank 0 (``recv_requests(local_reqs=...)``, the way
SGLang's own timeout aborts travel), and every rank takes it out of the broadcast list before
SGLang dispatches the list: within a step, every rank's runtime reads rank 0's clock and
rates. Effects outside the engine (events to the sidecar) come from rank 0 only; the program
routes' replies come from rank 0 (SGLang sends only rank 0's control replies).

With one rank nothing rides the broadcast and the clock stays live.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from thunderagent_sglang import compat
from thunderagent_sglang.engine import hooks
from thunderagent_sglang.engine.guards import guard
from thunderagent_sglang.engine.logs import get_logger


@dataclass(frozen=True)
class ProgramStep:
    """Rank 0's inputs for one scheduler step (pickled into SGLang's broadcast)."""

    now: float  # rank 0's monotonic clock when it read this step's requests
    inputs: dict  # rank 0's measures (the offloader's link and prefill rate, decode_shared)


class StepClock:
    """The runtime's clock: live until a step is agreed, then the agreed step's time."""

    def __init__(self, live=time.monotonic):
        self.live = live
        self.agreed: float | None = None

    def __call__(self) -> float:
        return self.live() if self.agreed is None else self.agreed


class TpConsensus:
    """Owned by the runtime: the step clock, this process's rank, the broadcast hook."""

    def __init__(self, runtime):
        self.runtime = runtime
        self.clock = StepClock()
        self.rank, self.size = 0, 1
        self.steps = 0  # steps agreed (rank 0's inputs applied)

    @property
    def leader(self) -> bool:
        return self.rank == 0

    def install(self) -> None:
        hooks.install(compat.REQUEST_RECEIVER_RECV, self.on_recv, "around")

    def attach(self) -> None:
        """Once SGLang's parallel groups exist: this scheduler's rank among its TP ranks."""
        parallel = compat.resolve(compat.GET_PARALLEL)()
        self.rank, self.size = int(parallel.tp_rank), int(parallel.tp_size)
        if self.size > 1:
            get_logger().info(
                "ThunderAgent: tensor-parallel rank %d of %d: program decisions use rank 0's "
                "clock and measures, sent with SGLang's per-step request broadcast%s",
                self.rank, self.size, "" if self.leader else "; events to the sidecar come "
                "from rank 0")

    def on_recv(self, original, receiver, local_reqs=None):
        """AROUND ``SchedulerRequestReceiver.recv_requests``: rank 0's step rides the
        broadcast (other ranks' local requests are dropped by SGLang); every rank applies it
        and gives SGLang the list without it."""
        if self.size <= 1:
            return original(receiver, local_reqs=local_reqs)
        # SGLang drops the other ranks' local requests: only rank 0 builds its step.
        # None on a failure: no rank moves its clock this step.
        step = guard(self._step) if self.leader else None
        reqs = original(receiver, local_reqs=[*(local_reqs or ()), *([step] if step else [])])
        kept = []
        for req in reqs:
            if isinstance(req, ProgramStep):
                guard(self._apply, req)
            else:
                kept.append(req)
        return kept

    def _step(self) -> ProgramStep:
        return ProgramStep(time.monotonic(), {**self.runtime.offload.consensus_inputs(),
                                              "decode_shared": self.runtime.decode_meter.local()})

    def _apply(self, step: ProgramStep) -> None:
        self.clock.agreed = step.now
        self.runtime.offload.adopt(step.inputs)
        self.runtime.decode_meter.adopt(step.inputs.get("decode_shared"))
        self.steps += 1

