"""What if our scheduler counted part of the host tier as room? A simulator experiment.

    python -m sim.host_admission [--out benchmarks/results/sim/host-admission.json]
    python -m sim.host_admission --cpu [--out benchmarks/results/sim/host-admission-cpu.json]

At the projections' GPU scale (``sim.project``: Qwen3-235B at TP8 on 8 H100s, an 850k-token
pool, a host tier twice that, loads back at an assumed 25 GB/s per GPU), plain SGLang with the
host tier, ours with it as the engine is today (the scheduler's capacity is the device pool),
and ours whose scheduler counts the device pool plus half the host tier (``SchedulerConfig``
capacity twice the pool). ``--cpu``: the same question on this CPU's validated model (the
runner's N=16 serving run with offload on: a 16384-token pool, a host tier of the same size,
loads free), ours with a capacity of the pool, and of the pool plus half the host tier, 5 seeds.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sim import project as P
from sim.engine import Engine
from sim.gpu_cost import GpuStepCost
from sim.policies import Plain, Thunder
from thunderagent_sglang.policy.snapshot import SchedulerConfig

CASES = (("mini-swe", 96), ("mini-swe", 192), ("openhands", 48), ("openhands", 192))
OUT = Path("benchmarks/results/sim/host-admission.json")


def systems():
    return {"plain-hicache": Plain, "ours-host": Thunder,
            "ours-host-counted": lambda: Thunder(SchedulerConfig(capacity_tokens=2 * P.KV_TOKENS))}


def run(minutes: float = 12.0, warmup: float = 2.0) -> list[dict]:
    cost, rows = GpuStepCost.load(), []
    for name, load in CASES:
        for system, make in systems().items():
            figures = P.simulate(P.WORKLOADS[name], "ours-host", load, cost, minutes=minutes,
                                 warmup=warmup, seed=0, policy=make())
            rows.append({"workload": name, "concurrency": load, "system": system,
                         **{k: figures[k] for k in ("steps_per_min", "kv_hit_rate")}})
            print(rows[-1], flush=True)
    return rows


def run_cpu(seeds: int = 5) -> list[dict]:
    import statistics

    from benchmarks.agentic import workload
    from sim.costs import StepCost

    cost = StepCost(**json.loads(Path("benchmarks/results/sim/validation.json").read_text())
                    ["cost"])
    rows = []
    for share in (0.0, 0.5):
        runs = []
        for seed in range(seeds):
            engine = Engine(Thunder(SchedulerConfig(capacity_tokens=int(16384 * (1 + share)))),
                            capacity_tokens=16384, block=32, cost=cost, seed=seed, slots=16,
                            spec=workload.WorkloadSpec(), host_tokens=16384)
            stats = engine.run(600.0)
            runs.append((stats.calls_per_min(60.0, 600.0), stats.hit_rate(60.0, 600.0)))
        rows.append({"host_share": share, "seeds": seeds,
                     "steps_per_min": round(statistics.mean(r for r, _ in runs), 1),
                     "per_seed": [round(r, 1) for r, _ in runs],
                     "kv_hit_rate": round(statistics.mean(h for _, h in runs), 4)})
        print(rows[-1], flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sim.host_admission", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="this CPU's validated model instead")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    args.out = args.out or (OUT.with_name("host-admission-cpu.json") if args.cpu else OUT)
    rows = run_cpu() if args.cpu else run()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"what": __doc__.split("\n\n")[0], "rows": rows},
                                   indent=1) + "\n")
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
