"""Tensor-parallel agreement without a server: rank 0's step rides the broadcast list and is
taken out of it on every rank; the clock and the offload measures follow it; the digest is a
function of the program state alone."""

from __future__ import annotations

import pytest

runtime_module = pytest.importorskip("thunderagent_sglang.engine.runtime")
tp_consensus = pytest.importorskip("thunderagent_sglang.engine.tp_consensus")
controls = pytest.importorskip("thunderagent_sglang.engine.controls")

from thunderagent_sglang import config  # noqa: E402

ProgramStep, StepClock = tp_consensus.ProgramStep, tp_consensus.StepClock


def runtime_of(rank: int, size: int = 2):
    runtime = runtime_module.ProgramRuntime(config.ThunderAgentConfig())
    runtime.scheduler.set_capacity(4096)
    runtime.consensus.rank, runtime.consensus.size = rank, size
    return runtime


class Broadcast:
    """SGLang's recv_requests as the hook sees it: rank 0's pulled requests plus its local
    ones reach every rank; other ranks' local requests are dropped."""

    def __init__(self, pulled):
        self.pulled = pulled
        self.local_from_rank0 = None

    def rank0(self, receiver, local_reqs=None):
        self.local_from_rank0 = list(local_reqs or [])
        return [*self.pulled, *self.local_from_rank0]

    def other(self, receiver, local_reqs=None):
        return [*self.pulled, *self.local_from_rank0]


def test_the_clock_is_live_until_a_step_is_agreed():
    ticks = iter([5.0, 6.0])
    clock = StepClock(live=lambda: next(ticks))
    assert (clock(), clock()) == (5.0, 6.0)
    clock.agreed = 100.0
    assert (clock(), clock()) == (100.0, 100.0)


def test_rank0s_step_rides_the_broadcast_and_every_rank_applies_it_and_drops_it():
    leader, follower = runtime_of(0), runtime_of(1)
    leader.offload.link = (512, 1e10, 5e-6)
    follower.offload.link = (512, 3e10, 1e-6)  # measured apart: each rank its own figure
    for _ in range(3):
        leader.offload.meter.add(1000, 0.5)
    wire = Broadcast(pulled=["req-a", "abort-b"])
    got0 = leader.consensus.on_recv(wire.rank0, "receiver", local_reqs=["timeout-abort"])
    got1 = follower.consensus.on_recv(wire.other, "receiver", local_reqs=None)
    assert got0 == got1 == ["req-a", "abort-b", "timeout-abort"]
    (step,) = [r for r in wire.local_from_rank0 if isinstance(r, ProgramStep)]
    assert leader.clock() == follower.clock() == step.now
    assert follower.offload.cost_model() == leader.offload.cost_model()
    assert follower.offload.recompute_rate() == leader.offload.recompute_rate() == 2000.0
    assert (leader.consensus.steps, follower.consensus.steps) == (1, 1)


def test_every_rank_decides_decay_by_rank0s_decode_steps():
    """The decode steps' shared fraction is measured on each rank; rank 0's rides the step."""
    leader, follower = runtime_of(0), runtime_of(1)
    for n in range(1, 65):  # 0.01 s shared + 0.001 s a sequence: 0.01 / (0.01 + 0.0325)
        leader.decode_meter.fit.add(n, 0.01 + 0.001 * n)
        follower.decode_meter.fit.add(n, 0.03 * n)  # nothing shared
    leader.decode_meter._added = follower.decode_meter._added = 64
    assert round(leader.decode_meter.local(), 4) == 0.2353 and follower.decode_meter.local() == 0
    wire = Broadcast(pulled=[])
    leader.consensus.on_recv(wire.rank0, "receiver")
    follower.consensus.on_recv(wire.other, "receiver")
    assert follower.decode_meter.value() == leader.decode_meter.value() == pytest.approx(0.2353,
                                                                                         abs=1e-4)


def test_one_rank_adds_nothing_and_keeps_the_live_clock():
    runtime = runtime_of(0, size=1)
    seen = {}

    def original(receiver, local_reqs=None):
        seen["local"] = local_reqs
        return ["req"]

    assert runtime.consensus.on_recv(original, "receiver", local_reqs=[]) == ["req"]
    assert seen["local"] == [] and runtime.clock.agreed is None and runtime.consensus.steps == 0


def test_a_failing_step_sends_nothing_and_no_rank_moves_its_clock():
    runtime = runtime_of(0)
    runtime.offload.consensus_inputs = lambda: 1 / 0
    wire = Broadcast(pulled=[])
    assert runtime.consensus.on_recv(wire.rank0, "receiver") == []
    assert wire.local_from_rank0 == [] and runtime.clock.agreed is None


def test_equal_program_state_gives_equal_digests_and_a_difference_shows():
    ranks = [runtime_of(0), runtime_of(1)]
    for runtime in ranks:
        runtime.clock.agreed = 50.0
        runtime.table.on_arrival("agent-1", "r1")
    first, second = (controls.digest(r) for r in ranks)
    assert first["digest"] == second["digest"] and (first["rank"], second["rank"]) == (0, 1)
    ranks[1].table.on_arrival("agent-2", "r2")
    assert controls.digest(ranks[1])["digest"] != first["digest"]
