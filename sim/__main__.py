"""``python -m sim run``: simulate agent programs on one engine, each system in turn.

    python -m sim run [--systems plain ours limit] [--slots 16] [--minutes 10] [--seed 0]
        [--capacity 16384] [--block 256] [--cost benchmarks/results/sim/validation.json]
    python -m sim validate [--calibration benchmarks/results/sim/calibration.json]
        [--points benchmarks/results/agentic/sweep-serve/points] [--out ...validation.json]

Systems: ``sim/policies.py``. Prints, per system, calls (the benchmark's "steps") per minute over the run after its first
minute, the prefix-cache hit rate, pauses and evictions, and the wall time the simulation took.
``run`` steps by the cost model the validation fitted on this CPU (``--cost``: a validation
table; ``--cost none`` for ``sim/costs.py``'s placeholders).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from benchmarks.agentic import workload
from sim.costs import StepCost
from sim.engine import Engine
from sim.policies import EvictionOnly, Plain, Proxy, Thunder, Ttl

POLICIES = {"plain": Plain, "ours": Thunder, "limit": Plain, "ours-sched-off": EvictionOnly,
            "ttl": lambda: Ttl(median_tool_wait(workload.WorkloadSpec(), 0)), "proxy": Proxy}


def median_tool_wait(spec: workload.WorkloadSpec, seed: int, programs: int = 64) -> float:
    """The median tool wait of the workload's first programs (the TTL that ``Ttl`` pins for)."""
    waits = [call.tool_wait_s for i in range(programs)
             for call in workload.serving_program(spec, seed, i % 16, i // 16).calls[1:]]
    return statistics.median(waits)
RESULTS = Path("benchmarks/results/sim")


def simulate(system: str, *, slots: int, minutes: float, seed: int, capacity: int,
             block: int, cost: StepCost = StepCost()) -> dict:
    spec = workload.WorkloadSpec()
    if system == "limit":  # a pool that holds the whole run: never evicts
        capacity = slots * 64 * spec.max_context_tokens
    policy = POLICIES[system]()
    engine = Engine(policy, capacity_tokens=capacity, block=block, seed=seed, slots=slots,
                    spec=spec, cost=cost)
    started = time.perf_counter()
    stats = engine.run(minutes * 60.0)
    return {"system": system, "calls_per_min": round(stats.calls_per_min(60.0, minutes * 60.0), 1),
            "hit_rate": round(stats.hit_rate(), 4), "steps": stats.steps,
            "rejected_calls": stats.rejected,
            "evicted_blocks": engine.cache.evicted, "pauses": getattr(policy, "pauses", 0),
            "wall_s": round(time.perf_counter() - started, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sim", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="simulate each system and print its figures")
    run.add_argument("--systems", nargs="+", choices=sorted(POLICIES),
                     default=["plain", "ours", "limit"],
                     help="plain (LRU), ours, ours-sched-off (our eviction only), ttl "
                          "(Continuum-style pinning), proxy (the published proxy's rule), "
                          "limit (a pool that never evicts)")
    run.add_argument("--slots", type=int, default=16, help="concurrent agent programs")
    run.add_argument("--minutes", type=float, default=10.0, help="simulated minutes")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--capacity", type=int, default=16384, help="KV pool, tokens")
    run.add_argument("--block", type=int, default=256, help="cache block, tokens")
    run.add_argument("--cost", default=str(RESULTS / "validation.json"),
                     help="a validation table whose fitted cost model steps the engine, or "
                          "'none' for the placeholder model")
    check = sub.add_parser("validate", help="fit the cost model once, predict the measured "
                           "runs, save the table")
    check.add_argument("--calibration", type=Path,
                       default=RESULTS / "calibration.json",
                       help="python -m benchmarks calibrate output (several prompt sizes)")
    check.add_argument("--points", type=Path,
                       default=Path("benchmarks/results/agentic/sweep-serve/points"),
                       help="the runner's point files (serve-c<N>-<system>.json)")
    check.add_argument("--block", type=int, default=32, help="cache block, tokens")
    check.add_argument("--out", type=Path, default=RESULTS / "validation.json")
    args = parser.parse_args(argv)
    if args.command == "validate":
        return _validate(args)
    if args.minutes <= 1 or args.slots < 1 or args.capacity < args.block or args.block < 1:
        parser.error("need --minutes > 1, --slots >= 1 and --capacity >= --block >= 1")
    try:
        cost = _cost(args.cost)
    except (OSError, ValueError, KeyError, TypeError) as error:
        parser.error(f"--cost {args.cost}: not a validation table ({error}); "
                     "python -m sim validate writes one")
    for system in args.systems:
        print(simulate(system, slots=args.slots, minutes=args.minutes, seed=args.seed,
                       capacity=args.capacity, block=args.block, cost=cost), flush=True)
    return 0


def _cost(path: str) -> StepCost:
    if path == "none":
        return StepCost()
    return StepCost(**json.loads(Path(path).read_text())["cost"])


def _validate(args) -> int:
    from sim.validate import validate

    for path in (args.calibration, args.points):
        if not path.exists():
            print(f"error: {path} does not exist (python -m benchmarks calibrate --prompt-tokens "
                  "512 1024 2048 4096 8192 --out ... writes a calibration)", file=sys.stderr)
            return 2
    table = validate(args.calibration, args.points, block=args.block)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(table, indent=1) + "\n")
    print(json.dumps(table["cost"]))
    for row in table["cells"]:
        print(f"N={row['concurrency']}: " + "; ".join(
            f"{s} measured {row[s]['measured']['steps_per_min']} predicted "
            f"{row[s]['predicted']['steps_per_min']} steps/min" for s in ("plain", "ours", "limit"))
            + "; " + "; ".join(f"{k} {row[k]['measured']} vs {row[k]['predicted']} "
                               f"({row[k]['ratio_error']:+.1%})" for k in (
                                   "ours/plain", "ours/limit", "sched-off/plain",
                                   "priority/plain")))
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
