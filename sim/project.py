"""Projections at the paper's serving scale: 8 H100s at tensor parallelism 8, 24-192 programs.

    python -m sim project [--workloads mini-swe openhands] [--loads 24 48 96 144 192]
        [--minutes 12] [--warmup-minutes 2] [--rollout-programs 144] [--replicas 2]
        [--group-size 8] [--out benchmarks/results/sim/projection]

Every number's origin:
- Step times: ``sim.gpu_cost`` on aiconfigurator's measured SGLang op tables for an H100 SXM,
  sliced for Qwen3-235B-A22B at TP8 (``benchmarks/results/sim/gpu/``, its source commit
  inside); 2 ms per step of CPU overhead, an estimate.
- KV pool: ``KV_TOKENS``, a memory estimate, not a measurement: 80 GiB per GPU at SGLang's
  static fraction 0.87 (74.7 GB) less FP8 weights (235B parameters plus the bfloat16
  embedding and head, 29.8 GB per GPU) less 4 GB of activations and graphs leaves about
  41 GB per GPU; a token's KV per GPU is 94 layers x 1 KV head x 128 x 2 (K and V) x 2 bytes
  = 48128 bytes; so 850,000 tokens.
- Programs: ``WORKLOADS``, assumptions about mini-SWE-agent and OpenHands on SWE-bench-like
  tasks (shared system prompt, turns, tool output and tool time), chosen before any run and not
  compared with the paper's figures; every number is in the preset below.
- Host tier (plain-hicache, ours-host): SGLang's default ``--hicache-ratio`` 2, write-back at
  eviction, loads back at 48128 bytes a token over each GPU's PCIe 5.0 x16 link at an assumed
  25 GB/s (an estimate); ours' keep/offload/drop at a pause through ``policy.offload``
  (a 5 us fixed cost per load-back, an estimate), its host ranks keeping live programs' KV
  longest.
- Policies: the simulator's (``sim.policies``); ours is the engine's own ``decide``.
Nothing here is set by comparing with the paper. Serving: N programs kept running; steps per
minute are calls completed per minute after the warm-up, the hit rate cached over prompt
tokens of those calls. Rollout: a GRPO batch of programs started at once, dealt round robin
to independent replicas (no router is modelled: no global queue, no migration), steps per
minute over the batch's makespan.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from benchmarks.agentic import workload
from sim.engine import Engine
from sim.gpu_cost import GpuStepCost
from sim.policies import Plain, Proxy, Thunder, Ttl, median_tool_wait
from sim.rollout import run_rollout

KV_TOKENS = 850_000
BLOCK = 512
PREFILL_TOKENS = 8192  # SGLang's chunked prefill size on an 8xH100 node
LIMIT_TOKENS = 50_000_000  # a pool no run fills: never evicts
OUT = Path("benchmarks/results/sim/projection")

WORKLOADS = {
    # mini-SWE-agent: one bash command per turn, a short shared prompt, short tool outputs
    "mini-swe": workload.WorkloadSpec(
        system_prompt_tokens=2500, task_tokens_min=400, task_tokens_max=1500,
        turns_mean=20.0, turns_sd=8.0, turns_min=5, turns_max=50,
        tool_output_median=400, tool_output_sigma=1.0, tool_output_min=50,
        tool_output_max=6000, output_tokens=250, tool_gap_median_s=1.5, tool_gap_sigma=1.2,
        tool_gap_max_s=120.0, max_context_tokens=65536),
    # OpenHands: a long prompt with tool schemas, more turns, larger observations and tools
    "openhands": workload.WorkloadSpec(
        system_prompt_tokens=6000, task_tokens_min=400, task_tokens_max=1500,
        turns_mean=35.0, turns_sd=12.0, turns_min=10, turns_max=80,
        tool_output_median=700, tool_output_sigma=1.1, tool_output_min=50,
        tool_output_max=8000, output_tokens=300, tool_gap_median_s=3.0, tool_gap_sigma=1.3,
        tool_gap_max_s=300.0, max_context_tokens=100000),
}
# SGLang's host tier at its default --hicache-ratio 2; a token's KV shard (48128 bytes) comes
# back over each GPU's own PCIe 5.0 x16 link at an assumed 25 GB/s: an estimate
HOST_TOKENS = 2 * KV_TOKENS
HOST_LOAD_TOKEN_S = 48128 / 25e9
SYSTEMS = {  # name: (label, policy factory, pool, host tier)
    "plain": ("SGLang/vLLM (LRU)", Plain, KV_TOKENS, 0),
    "plain-hicache": ("SGLang + HiCache (host 2x)", Plain, KV_TOKENS, HOST_TOKENS),
    "ttl": ("Continuum-style TTL pinning", None, KV_TOKENS, 0),
    "proxy": ("published ThunderAgent proxy (rule)", Proxy, KV_TOKENS, 0),
    "ours": ("ThunderAgent-SGLang (ours, offload off)", Thunder, KV_TOKENS, 0),
    "ours-host": ("ThunderAgent-SGLang + host tier", Thunder, KV_TOKENS, HOST_TOKENS),
    "limit": ("no eviction (limit)", Plain, LIMIT_TOKENS, 0),
}


def policy_of(system: str, spec: workload.WorkloadSpec, seed: int):
    if system == "ttl":
        return Ttl(median_tool_wait(spec, seed))
    return SYSTEMS[system][1]()


def simulate(spec, system: str, load: int, cost, *, minutes: float, warmup: float,
             seed: int, policy=None) -> dict:
    """``policy``: in place of the system's own (its pool and host tier stay)."""
    started = time.perf_counter()
    engine = Engine(policy or policy_of(system, spec, seed), capacity_tokens=SYSTEMS[system][2],
                    block=BLOCK, prefill_tokens=PREFILL_TOKENS, cost=cost, spec=spec,
                    seed=seed, slots=load, host_tokens=SYSTEMS[system][3],
                    host_load_token_s=HOST_LOAD_TOKEN_S)
    stats = engine.run(minutes * 60)
    start, end = warmup * 60, minutes * 60
    return {"steps_per_min": round(stats.calls_per_min(start, end), 1),
            "kv_hit_rate": round(stats.hit_rate(start, end), 4),
            "engine_steps": stats.steps, "rejected_calls": stats.rejected,
            "wall_s": round(time.perf_counter() - started, 1)}


def rollout(spec, system: str, cost, *, programs: int, replicas: int, group_size: int,
            seed: int) -> dict:
    """A GRPO batch started at once on ``replicas`` replicas (``sim.rollout``)."""
    result = run_rollout(lambda: policy_of(system, spec, seed), spec, cost, programs=programs,
                         group_size=group_size, seed=seed, capacity=SYSTEMS[system][2],
                         block=BLOCK, replicas=replicas, prefill_tokens=PREFILL_TOKENS,
                         host_tokens=SYSTEMS[system][3], host_load_token_s=HOST_LOAD_TOKEN_S)
    return {**result, "steps_per_min": round(result["steps_per_min"], 1)}


def project(workloads, loads, *, minutes: float, warmup: float, seed: int, out: Path,
            rollout_programs: int = 144, replicas: int = 2, group_size: int = 8) -> dict:
    cost = GpuStepCost.load()
    tables = {}
    for name in workloads:
        spec, points = WORKLOADS[name], []
        for load in loads:
            for system, (label, *_) in SYSTEMS.items():
                figures = simulate(spec, system, load, cost, minutes=minutes, warmup=warmup,
                                   seed=seed)
                points.append({"mode": name, "system": system, "label": label,
                               "concurrency": load, "figures": figures})
                print(name, load, system, figures, flush=True)
        rollouts = {}
        for system in SYSTEMS:
            rollouts[system] = rollout(spec, system, cost, programs=rollout_programs,
                                       replicas=replicas, group_size=group_size, seed=seed)
            print(name, "rollout", system, rollouts[system], flush=True)
        tables[name] = {"workload": spec.__dict__ | {"tool_types": []}, "points": points,
                        "ratios": _ratios(points, loads), "rollout": {
                            "programs": rollout_programs, "replicas": replicas,
                            "group_size": group_size, "systems": rollouts,
                            "ours/plain": round(rollouts["ours"]["steps_per_min"]
                                                / rollouts["plain"]["steps_per_min"], 3)}}
        _draw(points, out / name)
    result = {"what": __doc__.split("\n\n")[0], "cost": cost.to_json(), "kv_tokens": KV_TOKENS,
              "block": BLOCK, "prefill_tokens": PREFILL_TOKENS, "minutes": minutes,
              "warmup_minutes": warmup, "seed": seed, "workloads": tables}
    out.mkdir(parents=True, exist_ok=True)
    (out / "projection.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def _ratios(points: list[dict], loads) -> list[dict]:
    rows = []
    for load in loads:
        at = {p["system"]: p["figures"]["steps_per_min"] for p in points
              if p["concurrency"] == load}
        rows.append({"concurrency": load, **{f"ours/{s}": round(at["ours"] / at[s], 3)
                                             for s in ("plain", "ttl", "proxy", "limit")
                                             if at.get(s)},
                     "ours-host/plain-hicache": round(at["ours-host"] / at["plain-hicache"], 3),
                     "ours-host/limit": round(at["ours-host"] / at["limit"], 3)})
    return rows


def _draw(points: list[dict], out: Path) -> None:
    from benchmarks.agentic import plots

    out.mkdir(parents=True, exist_ok=True)
    plots.draw(points, out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sim project", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", nargs="+", choices=sorted(WORKLOADS),
                        default=sorted(WORKLOADS))
    parser.add_argument("--loads", type=int, nargs="+", default=[24, 48, 96, 144, 192])
    parser.add_argument("--minutes", type=float, default=12.0)
    parser.add_argument("--warmup-minutes", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rollout-programs", type=int, default=144)
    parser.add_argument("--replicas", type=int, default=2, help="rollout replicas (TP8 each)")
    parser.add_argument("--group-size", type=int, default=8, help="rollout samples per task")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    if min(args.loads) < 1 or not 0 <= args.warmup_minutes < args.minutes:
        parser.error("need loads >= 1 and 0 <= --warmup-minutes < --minutes")
    if args.replicas < 1 or args.group_size < 1 or args.rollout_programs % (
            args.group_size) or args.rollout_programs < args.replicas:
        parser.error("need --replicas >= 1 and --rollout-programs a multiple of "
                     "--group-size, at least one per replica")
    result = project(args.workloads, args.loads, minutes=args.minutes,
                     warmup=args.warmup_minutes, seed=args.seed, out=args.out,
                     rollout_programs=args.rollout_programs, replicas=args.replicas,
                     group_size=args.group_size)
    for name, table in result["workloads"].items():
        for row in table["ratios"]:
            print(name, row)
        print(name, "rollout ours/plain", table["rollout"]["ours/plain"])
    print(f"saved {args.out / 'projection.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
