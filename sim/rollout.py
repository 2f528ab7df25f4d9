"""A GRPO rollout batch on one or more independent replicas, run until every program ends.

The batch (``benchmarks.agentic.workload.rollout_batch``: ``programs / group_size`` tasks,
``group_size`` samples each, all started at once) is dealt round robin to ``replicas``
engines, each with its own pool and policy; no router is modelled (no global queue, no
migration). Steps per minute are the batch's calls over its makespan (the last replica's
last call), the hit rate cached over prompt tokens of every call.
"""

from __future__ import annotations

from benchmarks.agentic import workload
from sim.engine import Engine


def run_rollout(make_policy, spec: workload.WorkloadSpec, cost, *, programs: int,
                group_size: int, seed: int, capacity: int, block: int, replicas: int = 1,
                prefill_tokens: int = 4096, host_tokens: int = 0,
                host_load_token_s: float = 0.0) -> dict:
    batch = workload.rollout_batch(spec, seed, programs, group_size)
    calls, makespan, cached, prompt = 0, 0.0, 0, 0
    for r in range(replicas):
        mine = batch[r::replicas]
        engine = Engine(make_policy(), capacity_tokens=capacity, block=block,
                        prefill_tokens=prefill_tokens, cost=cost, spec=spec, seed=seed,
                        slots=len(mine), host_tokens=host_tokens,
                        host_load_token_s=host_load_token_s,
                        source=lambda slot, index, mine=mine: None if index else mine[slot])
        stats = engine.run(24 * 3600.0)
        calls += len(stats.finished)
        makespan = max(makespan, stats.finished[-1] if stats.finished else 0.0)
        cached += sum(c for _, _, c in stats.calls)
        prompt += sum(p for _, p, _ in stats.calls)
    return {"steps_per_min": round(calls * 60 / makespan, 2) if makespan else 0.0,
            "makespan_s": round(makespan, 1), "calls": calls,
            "kv_hit_rate": round(cached / prompt, 4) if prompt else 0.0}
