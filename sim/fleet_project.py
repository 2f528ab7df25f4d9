"""The paper's rollout setting through fronts: a GRPO batch on two GPU replicas, placed by a front.

    python -m sim fleet-project [--programs 144] [--replicas 2] [--group-size 8]
        [--out benchmarks/results/sim/projection/fleet-rollout.json]

``sim.project``'s rollout deals the batch round robin to independent replicas (no front).
Here the same batch (``benchmarks.agentic.workload.rollout_batch``), the same replicas (the
projections' H100 step costs, 850k-token pools, no host tier) and the same workload presets
go through ``sim.fleet`` with each front of ``sim/fronts.py``: SGLang's gateway over plain
replicas, the published proxy's rules over plain replicas, our router over ours
(``--thunderagent-decay auto``), and the limit (pools that never evict) behind the gateway.
Steps per minute are the batch's calls over its makespan.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from benchmarks.agentic import workload
from sim import project as P
from sim.fleet import Fleet
from sim.fronts import Gateway, ProxyFront, Router
from sim.gpu_cost import GpuStepCost
from sim.policies import Plain, Thunder

FRONTS = {"gateway": (Gateway, Plain, P.KV_TOKENS), "proxy": (ProxyFront, Plain, P.KV_TOKENS),
          "ours-router": (Router, Thunder, P.KV_TOKENS), "limit": (Gateway, Plain, P.LIMIT_TOKENS)}
OUT = P.OUT / "fleet-rollout.json"


def rollout(spec: workload.WorkloadSpec, system: str, cost, *, programs: int, replicas: int,
            group_size: int, seed: int = 0) -> dict:
    front, policy, pool = FRONTS[system]
    batch = workload.rollout_batch(spec, seed, programs, group_size)
    started = time.perf_counter()
    fleet = Fleet(front(), policy, replicas=replicas, capacity_tokens=pool, block=P.BLOCK,
                  cost=cost, spec=spec, seed=seed, slots=len(batch),
                  source=lambda slot, index: None if index else batch[slot],
                  prefill_tokens=P.PREFILL_TOKENS)
    stats = fleet.run(48 * 3600.0)
    end = stats.finished[-1] if stats.finished else 0.0
    return {"steps_per_min": round(len(stats.finished) * 60 / end, 1) if end else 0.0,
            "makespan_s": round(end, 1), "calls": len(stats.finished),
            "kv_hit_rate": round(stats.hit_rate(), 4),
            "kv_imbalance": round(stats.imbalance(0.0, end), 4),
            "migrations": stats.migrations, "wall_s": round(time.perf_counter() - started, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sim fleet-project", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", nargs="+", choices=sorted(P.WORKLOADS),
                        default=sorted(P.WORKLOADS))
    parser.add_argument("--programs", type=int, default=144)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    if args.programs < 1 or args.replicas < 1 or args.group_size < 1 \
            or args.programs % args.group_size:
        parser.error("need --programs, --replicas, --group-size >= 1, and --programs a "
                     "multiple of --group-size")
    cost, tables = GpuStepCost.load(), {}
    for name in args.workloads:
        rows = {}
        for system in FRONTS:
            rows[system] = rollout(P.WORKLOADS[name], system, cost, programs=args.programs,
                                   replicas=args.replicas, group_size=args.group_size)
            print(name, system, rows[system], flush=True)
        tables[name] = {"systems": rows, **{
            f"ours-router/{s}": round(rows["ours-router"]["steps_per_min"]
                                      / rows[s]["steps_per_min"], 3)
            for s in ("gateway", "proxy", "limit")}}
    try:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"what": __doc__.split("\n\n")[0],
                                        "programs": args.programs, "replicas": args.replicas,
                                        "group_size": args.group_size, "workloads": tables},
                                       indent=1) + "\n")
    except OSError as error:
        print(f"error: cannot write {args.out}: {error}", file=sys.stderr)
        return 2
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
