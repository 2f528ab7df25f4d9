"""The fleet simulator on constructed cases: our router's placement, stickiness and moves, the
published proxy's queue and 5 s resume, the gateway's cache affinity; and the committed fleet
validation table regenerated exactly."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.agentic.workload import Call, Program
from sim.costs import StepCost
from sim.fleet import Fleet
from sim.fronts import Gateway, ProxyFront, Router
from sim.policies import Plain, Thunder

UNIT = StepCost(base_s=1.0, prefill_token_s=0.0, prefill_attend_s=0.0, decode_seq_s=0.0,
                decode_context_s=0.0)  # every step takes one second


def program(pid: str, tokens: int, base: int, gap: float | None = 1.0) -> Program:
    """One call of ``tokens`` prompt tokens of its own (2 answer tokens), and a second one
    after ``gap`` seconds (none when ``gap`` is None)."""
    calls = [Call(tuple(range(base, base + tokens)), 2, 0.0)]
    if gap is not None:
        calls.append(Call(tuple(range(base + 50_000, base + 50_004)), 2, gap))
    return Program(pid, tuple(calls))


def fleet(front, policy, programs: list[Program], capacity: int, block: int = 4) -> Fleet:
    return Fleet(front, policy, replicas=2, capacity_tokens=capacity, block=block, cost=UNIT,
                 slots=len(programs), source=lambda slot, index: None if index
                 else programs[slot])


def finished_on(f: Fleet) -> list[int]:
    return [len(r.stats.finished) for r in f.replicas]


def test_our_router_spreads_new_programs_and_keeps_each_on_its_replica():
    """p0 goes to r0 (a tie, broken by name); r0's scheduler then counts it, so p1 goes to
    r1, which has more room; both second calls stay where their programs are."""
    router = Router()
    f = fleet(router, Thunder, [program("p0", 16, 0), program("p1", 16, 1000)], capacity=64)
    stats = f.run(100.0)
    assert router.placement == {}  # both ended
    assert [sorted(c[1] for c in r.stats.calls) for r in f.replicas] == [[16, 22], [16, 22]]
    assert [r.stats.cached_tokens for r in f.replicas] == [16, 16]  # each found its own head
    assert (len(stats.finished), stats.migrations, f.live) == (4, 0, 0)


def test_our_router_moves_a_program_held_on_a_full_replica_to_the_one_with_room():
    """Both programs are placed on r0 by hand; r0's pool (64 tokens, resume below 54) takes
    one 40-token program at a time, so p1 is held there; at the first poll after it waited,
    r1 (empty) can take it and re-prefilling there beats waiting: it is released on r0 and its
    calls run on r1."""
    seen = []

    class Watched(Router):
        def _move(self, move, now):
            super()._move(move, now)
            seen.append((move.program_id, "moved", move.program_id in self.moved_unrun))

        def finished(self, replica, call, now):
            super().finished(replica, call, now)
            seen.append((call.program_id, replica.name, call.program_id in self.moved_unrun))

    router = Watched()
    router.placement = {"p0": "r0", "p1": "r0"}
    f = fleet(router, Thunder, [program("p0", 40, 0), program("p1", 40, 1000)], capacity=64)
    stats = f.run(100.0)
    assert stats.migrations == 1
    # p1 may move again only once a call of it has finished on r1 (and it is gone when it ends)
    assert [e for e in seen if e[0] == "p1"] == [("p1", "moved", True), ("p1", "r1", False),
                                                 ("p1", "r1", False)]
    assert router.moved_unrun == set()
    assert finished_on(f) == [2, 2]
    assert {c[1] for c in f.replicas[1].stats.calls} == {40, 46}  # p1's two prompts
    assert "p1" not in f.replicas[0].policy.programs


def test_without_migration_the_held_program_waits_for_its_own_replica():
    router = Router(migration=False)
    router.placement = {"p0": "r0", "p1": "r0"}
    f = fleet(router, Thunder, [program("p0", 40, 0), program("p1", 40, 1000)], capacity=64)
    assert f.run(100.0).migrations == 0 and finished_on(f) == [4, 0]


def test_the_proxy_queues_a_program_past_capacity_and_resumes_it_on_its_5_s_tick():
    """1024-token pools; each program counts its 400 tokens + 100. p0 -> r0, p1 -> r1 (fewer
    active tokens), p2 -> r0 (a tie: the first), p3 -> r1 (the only one with 500 left); p4 fits
    nowhere and waits in the one queue. The single-call programs end at 2 s; at the 5 s check
    p4 resumes on the replica with the most room (r0 of two equal) and ends at 7 s."""
    proxy = ProxyFront()
    progs = [program(f"p{i}", 400, 1000 * i, gap=None) for i in range(5)]
    f = fleet(proxy, Plain, progs, capacity=1024)
    stats = f.run(100.0)
    assert stats.finished == [2.0, 2.0, 2.0, 2.0, 7.0]
    assert finished_on(f) == [3, 2]
    assert proxy.programs == {} and proxy.queue == {} and stats.migrations == 0


def test_the_gateway_sends_a_call_where_most_of_its_prompt_is_cached():
    """p1 arrives first and takes r0; p0 then goes to the idle r1. When p0's second call comes
    both replicas are idle (the least busy would be r0, by name), but r1 holds its prefix."""
    progs = [program("p1", 16, 1000, gap=3.0), program("p0", 16, 0, gap=5.0)]
    f = fleet(Gateway(), Plain, progs, capacity=256)
    f.run(100.0)
    assert [sorted(c[1] for c in r.stats.calls) for r in f.replicas] == [[16, 22], [16, 22]]
    assert [r.stats.cached_tokens for r in f.replicas] == [16, 16]


def test_the_committed_fleet_validation_is_what_its_command_makes():
    """``python -m sim fleet-validate`` gives back the committed table exactly (seeded)."""
    from sim.fleet_validate import validate

    committed = json.loads(Path("benchmarks/results/sim/fleet-validation.json").read_text())
    assert json.loads(json.dumps(validate())) == committed
    assert committed["serve"]["ours-router"]["measured"]["steps_per_min"] == 42.0


def test_the_gpu_rollout_through_each_front_ends_every_program():
    """``python -m sim fleet-project`` on a small batch: every front runs all 16 programs'
    calls to the end, on the projections' H100 costs; the same seed gives the same figures."""
    from benchmarks.agentic import workload
    from sim import project
    from sim.fleet_project import FRONTS, rollout
    from sim.gpu_cost import GpuStepCost

    spec, cost = project.WORKLOADS["mini-swe"], GpuStepCost.load()
    calls = sum(p.turns for p in workload.rollout_batch(spec, 0, 16, 8))
    rows = {s: rollout(spec, s, cost, programs=16, replicas=2, group_size=8) for s in FRONTS}
    assert {s: r["calls"] for s, r in rows.items()} == {s: calls for s in FRONTS}
    again = rollout(spec, "ours-router", cost, programs=16, replicas=2, group_size=8)
    assert {k: v for k, v in again.items() if k != "wall_s"} == {
        k: v for k, v in rows["ours-router"].items() if k != "wall_s"}
